use super::*;

const DEMO: &str = r#"
apiVersion: stagehand.dev/v1alpha1
kind: Pipeline
metadata: {name: shop}
spec:
  environments:
    - name: dev
      source: {overlay: environments/dev}
      sync: {interval: 30s}
    - name: staging
      promotesFrom: dev
      source: {overlay: environments/staging}
      approval: {required: 1, groups: [qa]}
    - name: prod
      promotesFrom: staging
      source: {branch: env/prod, path: environments/prod}
      cluster: {kubeconfig: /etc/stagehand/prod.kubeconfig, context: prod}
      approval: {required: 2, groups: [release-managers]}
      freezeWindows: [{start: "Fri 16:00", end: "Mon 08:00", timezone: Europe/Berlin}]
"#;

fn parse_err(text: &str) -> String {
    let err = parse(Path::new("pipeline.yaml"), text).expect_err("the text is invalid");
    crate::error_chain::ErrorChain(&err).to_string()
}

#[test]
fn the_design_example_parses_with_defaults_filled_in() {
    let p = parse(Path::new("pipeline.yaml"), DEMO).expect("the example is valid");
    assert_eq!(p.name, "shop");
    assert_eq!(p.repository.url, ".");
    let names: Vec<_> = p.environments.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["dev", "staging", "prod"]);
    let dev = p.environment("dev").expect("dev exists");
    assert_eq!(dev.sync.interval, Duration::from_secs(30));
    assert!(dev.sync.prune && dev.sync.self_heal);
    assert_eq!(dev.sync.timeout, Duration::from_secs(300));
    assert!(!dev.sync.force && !dev.sync.recreate);
    let prod = p.environment("prod").expect("prod exists");
    assert_eq!(
        prod.source,
        Source::Branch {
            branch: "env/prod".into(),
            path: "environments/prod".into()
        }
    );
    assert_eq!(prod.approval.required, 2);
    let FreezeSchedule::Weekly { start, end } = &prod.freeze_windows[0].schedule else {
        panic!("start and end make a weekly window");
    };
    assert_eq!(start.to_string(), "Fri 16:00");
    assert_eq!(end.weekday, 0);
    assert_eq!(prod.freeze_windows[0].reason, None);
    assert_eq!(
        prod.approval,
        ApprovalPolicy {
            required: 2,
            groups: vec!["release-managers".into()],
            allow_self_approval: false,
            allow_author_approval: true,
            exempt_rollbacks: false,
        }
    );
    assert_eq!(prod.promotion, PromotionPolicy::default());
    assert!(prod.promotion.require_healthy && !prod.promotion.auto);
    assert_eq!(prod.verify, None);
    let targets: Vec<_> = p.promotion_targets("dev").map(|e| &e.name).collect();
    assert_eq!(targets, ["staging"]);
}

#[test]
fn a_misspelt_field_is_rejected_by_name() {
    let text = DEMO.replace("promotesFrom: dev", "promoteFrom: dev");
    let err = parse_err(&text);
    assert!(err.contains("pipeline.yaml"), "{err}");
    assert!(err.contains("promoteFrom"), "{err}");
}

#[test]
fn promoting_from_a_later_or_unknown_environment_is_rejected() {
    let err = parse_err(&DEMO.replace("promotesFrom: staging", "promotesFrom: qa"));
    assert!(
        err.contains("spec.environments[2].promotesFrom") && err.contains("\"qa\""),
        "{err}"
    );
}

#[test]
fn duplicate_environment_names_are_rejected() {
    let err = parse_err(&DEMO.replace("- name: prod", "- name: dev"));
    assert!(err.contains("spec.environments[2].name"), "{err}");
    assert!(err.contains("listed twice"), "{err}");
}

#[test]
fn a_source_with_overlay_and_branch_is_rejected() {
    let err = parse_err(&DEMO.replace(
        "source: {overlay: environments/dev}",
        "source: {overlay: environments/dev, branch: dev}",
    ));
    assert!(err.contains("spec.environments[0].source"), "{err}");
}

#[test]
fn paths_that_leave_the_repository_are_rejected() {
    let err = parse_err(&DEMO.replace("environments/dev", "../elsewhere"));
    assert!(
        err.contains("spec.environments[0].source.overlay") && err.contains("leaves"),
        "{err}"
    );
}

#[test]
fn bad_durations_and_freeze_windows_name_their_field() {
    let err = parse_err(&DEMO.replace("interval: 30s", "interval: soon"));
    assert!(err.contains("spec.environments[0].sync.interval"), "{err}");
    let err = parse_err(&DEMO.replace("interval: 30s", "interval: 30s, timeout: later"));
    assert!(err.contains("spec.environments[0].sync.timeout"), "{err}");
    let err = parse_err(&DEMO.replace("Fri 16:00", "Friday 25:00"));
    assert!(
        err.contains("spec.environments[2].freezeWindows[0].start"),
        "{err}"
    );
}

#[test]
fn prune_guards_default_to_off_and_half_and_a_share_above_100_is_refused() {
    let p = parse(Path::new("pipeline.yaml"), DEMO).expect("valid");
    let sync = &p.environments[0].sync;
    assert!(!sync.adopt && !sync.prune_adopted && !sync.prune_namespaces && !sync.prune_crds);
    assert_eq!(sync.max_prune_percent, 50);
    let text = DEMO.replace(
        "interval: 30s",
        "interval: 30s, adopt: true, pruneCRDs: true, maxPrunePercent: 100",
    );
    let p = parse(Path::new("pipeline.yaml"), &text).expect("valid");
    let sync = &p.environments[0].sync;
    assert!(sync.adopt && sync.prune_crds && !sync.prune_namespaces);
    assert_eq!(sync.max_prune_percent, 100);
    let err = parse_err(&DEMO.replace("interval: 30s", "interval: 30s, maxPrunePercent: 101"));
    assert!(
        err.contains("spec.environments[0].sync.maxPrunePercent"),
        "{err}"
    );
}

#[test]
fn a_promote_section_is_validated_with_field_names() {
    let text = DEMO.replace(
            "approval: {required: 1, groups: [qa]}",
            "approval: {required: 1, groups: [qa]}\n      promote: {images: [shop/web], files: [version.env], fields: [{file: app.yaml, path: data.VERSION}]}",
        );
    let p = parse(Path::new("pipeline.yaml"), &text).expect("valid");
    let staging = p.environment("staging").expect("staging exists");
    assert!(staging.promote.images.includes("shop/web"));
    assert!(!staging.promote.images.includes("shop/worker"));
    assert_eq!(staging.promote.fields[0].path, ["data", "VERSION"]);
    assert!(
        p.environment("prod")
            .expect("prod")
            .promote
            .images
            .includes("any")
    );

    let err = parse_err(&text.replace("path: data.VERSION", "path: data..VERSION"));
    assert!(
        err.contains("spec.environments[1].promote.fields[0].path"),
        "{err}"
    );
    let err = parse_err(&text.replace("files: [version.env]", "files: [../x]"));
    assert!(
        err.contains("spec.environments[1].promote.files[0]"),
        "{err}"
    );
    let err = parse_err(&DEMO.replace(
        "sync: {interval: 30s}",
        "sync: {interval: 30s}\n      promote: {allowMerge: true}",
    ));
    assert!(err.contains("spec.environments[0].promote"), "{err}");
}

#[test]
fn credentials_inside_the_repository_url_are_refused_without_repeating_them() {
    let with_url = |url: &str| {
        DEMO.replace(
            "spec:\n",
            &format!("spec:\n  repository: {{url: \"{url}\", branch: main}}\n"),
        )
    };
    for url in [
        "https://deployer:hunter2-secret@git.example.test/shop.git",
        "https://ghp_hunter2-secret@git.example.test/shop.git",
        "http://x-access-token:hunter2-secret@127.0.0.1:8080/shop.git",
        "ssh://git:hunter2-secret@git.example.test/shop.git",
    ] {
        let err = parse_err(&with_url(url));
        assert!(err.contains("spec.repository.url"), "{err}");
        assert!(err.contains("credentials"), "{err}");
        assert!(!err.contains("hunter2-secret"), "{err}");
    }
    for url in [
        "https://git.example.test/shop.git",
        "ssh://git@git.example.test/shop.git",
        "git@git.example.test:team/shop.git",
        "../shop",
    ] {
        parse(Path::new("pipeline.yaml"), &with_url(url))
            .unwrap_or_else(|e| panic!("{url} is fine: {e}"));
    }
}

#[test]
fn branches_that_are_not_valid_ref_names_are_refused_by_field() {
    for bad in [
        "env..prod",
        "env prod",
        "env/prod.lock",
        "-prod",
        "env~1",
        "a@{b",
        "env/",
    ] {
        let err = parse_err(&DEMO.replace("branch: env/prod", &format!("branch: {bad:?}")));
        assert!(
            err.contains("spec.environments[2].source.branch"),
            "{bad}: {err}"
        );
        assert!(err.contains("not a valid branch name"), "{bad}: {err}");
    }
    let err = parse_err(&DEMO.replace(
        "spec:\n",
        "spec:\n  repository: {url: ., branch: \"main..x\"}\n",
    ));
    assert!(err.contains("spec.repository.branch"), "{err}");
}

#[test]
fn a_freeze_window_time_zone_must_be_an_iana_name() {
    for bad in ["Mars/Olympus_Mons", "CEST+2", "Europe/Berlin "] {
        let err =
            parse_err(&DEMO.replace("timezone: Europe/Berlin", &format!("timezone: {bad:?}")));
        assert!(
            err.contains("spec.environments[2].freezeWindows[0].timezone"),
            "{bad}: {err}"
        );
        assert!(err.contains("IANA"), "{bad}: {err}");
    }
    for good in ["America/New_York", "UTC", "Asia/Kolkata"] {
        parse(
            Path::new("pipeline.yaml"),
            &DEMO.replace("timezone: Europe/Berlin", &format!("timezone: {good}")),
        )
        .unwrap_or_else(|e| panic!("{good} is an IANA name: {e}"));
    }
}

#[test]
fn author_approval_and_rollback_exemption_are_read_from_the_approval_section() {
    let text = DEMO.replace(
        "approval: {required: 2, groups: [release-managers]}",
        "approval: {required: 2, groups: [release-managers], allowSelfApproval: true, \
             allowAuthorApproval: false, exemptRollbacks: true}",
    );
    let p = parse(Path::new("pipeline.yaml"), &text).expect("valid");
    let prod = &p.environment("prod").expect("prod").approval;
    assert!(prod.allow_self_approval && !prod.allow_author_approval && prod.exempt_rollbacks);
    let staging = &p.environment("staging").expect("staging").approval;
    assert!(staging.allow_author_approval && !staging.exempt_rollbacks);
    let err = parse_err(&text.replace("exemptRollbacks: true", "exemptRollback: true"));
    assert!(err.contains("exemptRollback"), "{err}");
}

#[test]
fn a_promotion_section_is_read_and_validated_by_field() {
    let with = |env: &str, section: &str| {
        DEMO.replace(
            &format!("source: {{overlay: environments/{env}}}"),
            &format!("source: {{overlay: environments/{env}}}\n      {section}"),
        )
    };
    let text = with(
        "staging",
        "promotion: {soak: 30m, requireHealthy: false, supersede: true}",
    );
    let p = parse(Path::new("pipeline.yaml"), &text).expect("valid");
    let staging = &p.environment("staging").expect("staging").promotion;
    assert_eq!(
        *staging,
        PromotionPolicy {
            soak: Duration::from_secs(1800),
            auto: false,
            require_healthy: false,
            supersede: true,
        }
    );

    let auto = with("staging", "promotion: {auto: true, soak: 1h}").replace(
        "approval: {required: 1, groups: [qa]}",
        "approval: {groups: [qa]}",
    );
    let p = parse(Path::new("pipeline.yaml"), &auto).expect("auto without approvals");
    let staging = &p.environment("staging").expect("staging").promotion;
    assert!(staging.auto && staging.require_healthy);
    assert_eq!(staging.soak, Duration::from_secs(3600));

    let err = parse_err(&with("staging", "promotion: {auto: true}"));
    assert!(err.contains("spec.environments[1].promotion.auto"), "{err}");
    assert!(err.contains("approval.required is 1"), "{err}");
    assert!(err.contains("collect approvals"), "{err}");

    let err = parse_err(&with("staging", "promotion: {soak: a while}"));
    assert!(err.contains("spec.environments[1].promotion.soak"), "{err}");
    assert!(err.contains("\"a while\""), "{err}");

    let err = parse_err(&with("dev", "promotion: {soak: 5m}"));
    assert!(err.contains("spec.environments[0].promotion"), "{err}");
    assert!(err.contains("no promotesFrom"), "{err}");

    let err = parse_err(&with("staging", "promotion: {soakTime: 5m}"));
    assert!(err.contains("soakTime"), "{err}");
}

#[test]
fn a_verify_job_must_be_a_kubernetes_object_name() {
    let with = |job: &str| {
        DEMO.replace(
            "approval: {required: 1, groups: [qa]}",
            &format!("approval: {{required: 1, groups: [qa]}}\n      verify: {{job: {job}}}"),
        )
    };
    let p = parse(Path::new("pipeline.yaml"), &with("smoke-test.v2")).expect("valid");
    assert_eq!(
        p.environment("staging").expect("staging").verify,
        Some(crate::pipeline::Verify {
            job: Some("smoke-test.v2".into()),
            checks: Vec::new(),
            on_failure: crate::pipeline::verify::OnFailure::Nothing,
            every: None,
        })
    );
    for bad in ["Smoke", "\"-smoke\"", "\"smoke test\"", "\"\""] {
        let err = parse_err(&with(bad));
        assert!(
            err.contains("spec.environments[1].verify.job"),
            "{bad}: {err}"
        );
    }
    let err = parse_err(&DEMO.replace(
        "approval: {required: 1, groups: [qa]}",
        "verify: {name: smoke}",
    ));
    assert!(err.contains("name"), "{err}");
}

#[test]
fn an_absolute_freeze_window_takes_rfc3339_times_and_a_reason() {
    let with = |window: &str| {
        DEMO.replace(
                r#"freezeWindows: [{start: "Fri 16:00", end: "Mon 08:00", timezone: Europe/Berlin}]"#,
                &format!(
                    r#"freezeWindows: [{{start: "Fri 16:00", end: "Mon 08:00", reason: weekend}}, {window}]"#
                ),
            )
    };
    let text = with(
        r#"{from: "2026-12-20T00:00:00Z", until: "2027-01-04T08:00:00+01:00", reason: holidays}"#,
    );
    let p = parse(Path::new("pipeline.yaml"), &text).expect("valid");
    let windows = &p.environment("prod").expect("prod").freeze_windows;
    assert_eq!(windows[0].reason.as_deref(), Some("weekend"));
    assert_eq!(windows[0].timezone, "UTC");
    assert_eq!(windows[1].reason.as_deref(), Some("holidays"));
    let FreezeSchedule::Absolute { from, until } = windows[1].schedule else {
        panic!("from and until make an absolute window");
    };
    assert_eq!(from.as_second(), 1_797_724_800);
    assert_eq!(until.to_string(), "2027-01-04T07:00:00Z");

    let cases = [
        (
            r#"{from: "2027-01-04T08:00:00+01:00", until: "2027-01-04T07:00:00Z"}"#,
            "freezeWindows[1].until",
            "not after",
        ),
        (
            r#"{from: "2026-12-20", until: "2027-01-04T08:00:00Z"}"#,
            "freezeWindows[1].from",
            "RFC 3339",
        ),
        (
            r#"{from: "2026-12-20T00:00:00", until: "2027-01-04T08:00:00Z"}"#,
            "freezeWindows[1].from",
            "offset",
        ),
        (
            r#"{from: "2026-12-20T00:00:00Z", until: "2027-01-04T08:00:00Z", end: "Mon 08:00"}"#,
            "freezeWindows[1]",
            "mixes",
        ),
        (
            r#"{from: "2026-12-20T00:00:00Z"}"#,
            "freezeWindows[1]",
            "needs both from and until",
        ),
        (
            r#"{start: "Fri 16:00"}"#,
            "freezeWindows[1]",
            "needs both start and end",
        ),
        (
            r#"{timezone: UTC}"#,
            "freezeWindows[1]",
            "needs start and end",
        ),
        (
            r#"{start: "Fri 16:00", end: "fri 16:00"}"#,
            "freezeWindows[1].end",
            "same as start",
        ),
        (
            r#"{start: "Fri 16:00", end: "Sat 16:00", reason: " "}"#,
            "freezeWindows[1].reason",
            "empty",
        ),
    ];
    for (window, at, problem) in cases {
        let err = parse_err(&with(window));
        assert!(
            err.contains(&format!("spec.environments[2].{at}")),
            "{window}: {err}"
        );
        assert!(err.contains(problem), "{window}: {err}");
    }
}

#[test]
fn a_wrong_api_version_is_rejected() {
    let err = parse_err(&DEMO.replace("v1alpha1", "v9"));
    assert!(err.contains("apiVersion"), "{err}");
}

#[test]
fn decryption_keys_follow_their_precedence_and_never_fall_back_to_the_process() {
    let file = Path::new("/gitops/pipeline.yaml");
    let decryption = |text: &str| -> Vec<Decryption> {
        parse(file, text)
            .expect("valid")
            .environments
            .into_iter()
            .map(|e| e.decryption)
            .collect()
    };
    assert!(decryption(DEMO).iter().all(|d| *d == Decryption::Shared));
    let own = DEMO.replace(
        "      sync: {interval: 30s}\n",
        "      sync: {interval: 30s}\n      decryption: {ageKeyFile: keys/mine.txt}\n",
    );
    assert_eq!(
        decryption(&own),
        [
            Decryption::AgeKeyFile("/gitops/keys/mine.txt".into()),
            Decryption::Nothing,
            Decryption::Nothing,
        ]
    );
    let dir = own.replace("spec:\n", "spec:\n  decryption: {ageKeysDir: /keys}\n");
    assert_eq!(
        decryption(&dir),
        [
            Decryption::AgeKeyFile("/gitops/keys/mine.txt".into()),
            Decryption::AgeKeyFile("/keys/staging.agekey".into()),
            Decryption::AgeKeyFile("/keys/prod.agekey".into()),
        ]
    );
    let empty = DEMO.replace("spec:\n", "spec:\n  decryption: {ageKeysDir: \" \"}\n");
    assert!(parse_err(&empty).contains("spec.decryption.ageKeysDir"));
}

#[test]
fn ignore_differences_rules_are_read_from_pointers_and_dotted_paths() {
    let text = DEMO.replace(
        "      sync: {interval: 30s}\n",
        "      sync: {interval: 30s}
      ignoreDifferences:
        - {group: apps, kind: Deployment, name: web, jsonPointers: [/spec/replicas]}
        - kind: ConfigMap
          group: \"\"
          namespace: shop
          fieldPaths: ['data[\"a.b\"]', 'spec.template.spec.containers[0].image']
          managedFieldsManagers: [kube-controller-manager]
",
    );
    let p = parse(Path::new("pipeline.yaml"), &text).expect("valid");
    let rules = &p.environment("dev").expect("dev").ignore_differences;
    assert_eq!(rules.len(), 2);
    assert!(rules[0].selects("apps", "Deployment", Some("x"), "web"));
    assert!(!rules[0].selects("apps", "Deployment", Some("x"), "api"));
    assert!(!rules[0].selects("extensions", "Deployment", Some("x"), "web"));
    assert_eq!(rules[0].fields[0].tokens, ["spec", "replicas"]);
    assert!(rules[1].selects("", "ConfigMap", Some("shop"), "any"));
    assert!(!rules[1].selects("", "ConfigMap", Some("other"), "any"));
    assert_eq!(rules[1].fields[0].tokens, ["data", "a.b"]);
    assert_eq!(rules[1].fields[1].tokens[4], "0");
    assert_eq!(rules[1].managers, ["kube-controller-manager"]);
    assert!(
        p.environment("prod")
            .expect("prod")
            .ignore_differences
            .is_empty()
    );
}

#[test]
fn invalid_ignore_differences_rules_name_the_environment_the_rule_and_the_field() {
    let with = |rule: &str| {
        parse_err(&DEMO.replace(
            "      approval: {required: 2, groups: [release-managers]}\n",
            &format!(
                "      approval: {{required: 2, groups: [release-managers]}}\n      \
                 ignoreDifferences:\n        - {{kind: Service, jsonPointers: [/spec/x]}}\n        - {rule}\n"
            ),
        ))
    };
    let cases = [
        (
            "{jsonPointers: [/spec/replicas]}",
            "field spec.environments[2].ignoreDifferences[1].kind: is missing: a rule names the \
             kind of the objects it selects, such as Deployment (environment \"prod\")",
        ),
        (
            "{kind: apps/Deployment, jsonPointers: [/spec/replicas]}",
            "field spec.environments[2].ignoreDifferences[1].kind: \"apps/Deployment\" is not a \
             Kubernetes kind",
        ),
        (
            "{kind: Deployment, group: Apps, jsonPointers: [/spec/replicas]}",
            "field spec.environments[2].ignoreDifferences[1].group: \"Apps\" is not an API group",
        ),
        (
            "{kind: Deployment, namespace: Shop, jsonPointers: [/spec/replicas]}",
            "field spec.environments[2].ignoreDifferences[1].namespace: \"Shop\" is not a valid name",
        ),
        (
            "{kind: Deployment, jsonPointers: [/spec/replicas, spec/replicas]}",
            "field spec.environments[2].ignoreDifferences[1].jsonPointers[1]: \"spec/replicas\" \
             is not a JSON Pointer: it must start with '/', as in /spec/replicas (environment \"prod\")",
        ),
        (
            "{kind: Deployment, fieldPaths: [spec..replicas]}",
            "field spec.environments[2].ignoreDifferences[1].fieldPaths[0]: \"spec..replicas\" is \
             not a field path such as spec.replicas",
        ),
        (
            "{kind: Deployment, fieldPaths: [metadata.labels]}",
            "field spec.environments[2].ignoreDifferences[1].fieldPaths[0]: \"metadata.labels\" \
             names a field Stagehand needs to identify the object",
        ),
        (
            "{kind: Deployment, managedFieldsManagers: [stagehand]}",
            "field spec.environments[2].ignoreDifferences[1].managedFieldsManagers[0]: \
             \"stagehand\" is Stagehand's own field manager",
        ),
        (
            "{kind: Deployment, name: web}",
            "field spec.environments[2].ignoreDifferences[1]: ignores nothing: give jsonPointers, \
             fieldPaths or managedFieldsManagers (environment \"prod\")",
        ),
        (
            "{kind: Deployment, jqPathExpressions: [.spec]}",
            "unknown field `jqPathExpressions`",
        ),
    ];
    for (rule, expected) in cases {
        let error = with(rule);
        assert!(error.contains(expected), "{rule}:\n{error}");
    }
}

#[test]
fn require_signed_commits_names_a_file_beside_the_pipeline_and_is_validated_by_field() {
    let with = |env: &str, section: &str| {
        DEMO.replace(
            &format!("source: {{overlay: environments/{env}}}"),
            &format!("source: {{overlay: environments/{env}}}\n      {section}"),
        )
    };
    let text = with(
        "staging",
        "requireSignedCommits: {allowedSignersFile: keys/allowed_signers}",
    );
    let p = parse(Path::new("/etc/stagehand/pipeline.yaml"), &text).expect("valid");
    assert_eq!(
        p.environment("staging")
            .expect("staging")
            .require_signed_commits,
        Some(SignedCommits {
            allowed_signers: AllowedSignersSource::File(PathBuf::from(
                "/etc/stagehand/keys/allowed_signers"
            )),
        })
    );
    assert_eq!(
        p.environment("dev").expect("dev").require_signed_commits,
        None
    );
    let secret = with(
        "staging",
        "requireSignedCommits: {allowedSignersSecret: {name: signers}}",
    );
    let p = parse(Path::new("pipeline.yaml"), &secret).expect("valid");
    assert_eq!(
        p.environment("staging")
            .expect("staging")
            .require_signed_commits,
        Some(SignedCommits {
            allowed_signers: AllowedSignersSource::Secret {
                name: "signers".into(),
                key: "allowed_signers".into(),
            },
        })
    );
    let cases = [
        (
            with("dev", "requireSignedCommits: {allowedSignersFile: s}"),
            "field spec.environments[0].requireSignedCommits: is set, but nothing is promoted",
        ),
        (
            with(
                "staging",
                "requireSignedCommits: {allowedSignersFile: \" \"}",
            ),
            "field spec.environments[1].requireSignedCommits.allowedSignersFile: must not be empty",
        ),
        (
            with("staging", "requireSignedCommits: {allowedSigners: s}"),
            "allowedSigners",
        ),
        (
            with("staging", "requireSignedCommits: {}"),
            "field spec.environments[1].requireSignedCommits: needs allowedSignersFile",
        ),
        (
            with(
                "staging",
                "requireSignedCommits: {allowedSignersFile: s, allowedSignersSecret: {name: s}}",
            ),
            "field spec.environments[1].requireSignedCommits.allowedSignersSecret: give either",
        ),
        (
            with(
                "staging",
                "requireSignedCommits: {allowedSignersSecret: {name: Signers}}",
            ),
            "field spec.environments[1].requireSignedCommits.allowedSignersSecret.name: \"Signers\"",
        ),
    ];
    for (text, expected) in cases {
        let err = parse_err(&text);
        assert!(err.contains(expected), "{err}");
    }
}

#[test]
fn verification_checks_are_read_with_their_defaults() {
    use crate::pipeline::verify::{OnFailure, Probe};
    let text = DEMO.replace(
        "approval: {required: 1, groups: [qa]}",
        r#"approval: {required: 1, groups: [qa]}
      verify:
        onFailure: rollback
        every: 15m
        checks:
          - name: error-rate
            prometheus: {url: "http://prometheus:9090", query: "sum(errors)", below: 0.05, bearerTokenFile: token}
            interval: 30s
            successes: 3
          - name: ready
            http: {url: "https://shop.example.com/healthz", condition: '$.status == "ok"'}"#,
    );
    let p = parse(Path::new("/etc/stagehand/pipeline.yaml"), &text).expect("valid");
    let verify = p
        .environment("staging")
        .expect("staging")
        .verify
        .clone()
        .expect("verify");
    assert_eq!(verify.on_failure, OnFailure::Rollback);
    assert_eq!(verify.every, Some(Duration::from_secs(900)));
    assert_eq!(verify.checks.len(), 2);
    let rate = &verify.checks[0];
    assert_eq!(
        (rate.interval, rate.timeout, rate.successes, rate.failures),
        (Duration::from_secs(30), Duration::from_secs(300), 3, 1)
    );
    let Probe::Prometheus(query) = &rate.probe else {
        panic!("{rate:?}")
    };
    assert_eq!(query.below, Some(0.05));
    assert_eq!(
        query.bearer_token_file.as_deref(),
        Some(Path::new("/etc/stagehand/token"))
    );
    let Probe::Http(http) = &verify.checks[1].probe else {
        panic!("{verify:?}")
    };
    assert_eq!(http.status, 200);
    assert_eq!(
        http.condition.as_ref().map(ToString::to_string).as_deref(),
        Some(r#"$.status == "ok""#)
    );
}

#[test]
fn a_bad_verification_check_names_its_field() {
    let with = |verify: &str| {
        DEMO.replace(
            "approval: {required: 1, groups: [qa]}",
            &format!("approval: {{required: 1, groups: [qa]}}\n      verify: {verify}"),
        )
    };
    for (verify, expected) in [
        (
            "{}",
            "spec.environments[1].verify: names neither a job nor checks",
        ),
        (
            "{job: smoke, onFailure: retry}",
            "spec.environments[1].verify.onFailure",
        ),
        (
            "{job: smoke, every: 5m}",
            "spec.environments[1].verify.every",
        ),
        (
            "{checks: [{name: a}]}",
            "spec.environments[1].verify.checks[0]: needs exactly one of prometheus or http",
        ),
        (
            "{checks: [{name: a, http: {url: x}}]}",
            "spec.environments[1].verify.checks[0].http.url",
        ),
        (
            "{checks: [{name: a, http: {url: 'http://x', status: 42}}]}",
            "checks[0].http.status",
        ),
        (
            "{checks: [{name: a, http: {url: 'http://x', condition: '$.a = 1'}}]}",
            "checks[0].http.condition",
        ),
        (
            "{checks: [{name: a, prometheus: {url: 'http://x', query: up, below: 1, above: 2}}]}",
            "checks[0].prometheus.below",
        ),
        (
            "{checks: [{name: a, prometheus: {url: 'http://x', query: ''}}]}",
            "checks[0].prometheus.query",
        ),
        (
            "{checks: [{name: a, interval: 0s, http: {url: 'http://x'}}]}",
            "checks[0].interval",
        ),
        (
            "{checks: [{name: a, failures: 0, http: {url: 'http://x'}}]}",
            "checks[0].failures",
        ),
        (
            "{checks: [{name: a, http: {url: 'http://x'}}, {name: a, http: {url: 'http://y'}}]}",
            "checks[1].name",
        ),
        (
            "{checks: [{name: 'a b', http: {url: 'http://x'}}]}",
            "checks[0].name",
        ),
    ] {
        let err = parse_err(&with(verify));
        assert!(err.contains(expected), "{verify}: {err}");
    }
}

/// DEMO with `images` (YAML list items at the indentation of `spec`'s fields) before its
/// environments.
fn with_images(images: &str) -> String {
    DEMO.replace(
        "  environments:\n",
        &format!("  images:\n{images}  environments:\n"),
    )
}

#[test]
fn an_image_source_enters_the_first_environment_and_sets_its_repository_by_default() {
    let text = with_images(
        "    - name: web\n      repository: registry.example.com:5000/shop/web\n      policy: {semver: {range: \">=1.0.0\"}}\n    - name: nginx\n      repository: nginx\n      policy: {semver: {range: \">=1.25\"}}\n      pinDigest: true\n      credentialsSecret: {name: hub-pull}\n      interval: 1m\n      kustomizeName: proxy\n      group: edge\n",
    );
    let p = parse(Path::new("/etc/stagehand/pipeline.yaml"), &text).expect("valid");
    let [web, nginx] = &p.images[..] else {
        panic!("two sources: {:?}", p.images)
    };
    assert_eq!(web.repository.registry, "registry.example.com:5000");
    assert_eq!(web.repository.path, "shop/web");
    assert_eq!(web.environment, "dev");
    assert_eq!(web.kustomize_name, "registry.example.com:5000/shop/web");
    assert_eq!(web.interval, Duration::from_secs(300));
    assert!(!web.pin_digest && web.credentials.is_none() && web.group.is_none());
    assert_eq!(web.unit(), "web");
    assert_eq!(nginx.repository.to_string(), "docker.io/library/nginx");
    assert_eq!(nginx.kustomize_name, "proxy");
    assert_eq!(nginx.interval, Duration::from_secs(60));
    assert!(nginx.pin_digest);
    assert_eq!(
        nginx.credentials,
        Some(crate::pipeline::RegistryCredentials::Secret {
            name: "hub-pull".into(),
            key: ".dockerconfigjson".into()
        })
    );
    assert_eq!(nginx.unit(), "edge");
}

#[test]
fn image_sources_are_validated_naming_the_field() {
    let source = "    - {name: web, repository: registry.example.com/shop/web, policy: {semver: {range: \">=1\"}}}\n";
    assert!(parse(Path::new("p.yaml"), &with_images(source)).is_ok());
    let cases = [
        (
            "repository: registry.example.com/shop/web, ",
            "",
            "spec.images[0].repository: is missing",
        ),
        (
            ", policy: {semver: {range: \">=1\"}}",
            "",
            "spec.images[0].policy: is missing",
        ),
        (
            "shop/web",
            "shop/web:1.2",
            "spec.images[0].repository: \"registry.example.com/shop/web:1.2\" names a tag",
        ),
        (
            "shop/web",
            "shop/web@sha256:abc",
            "spec.images[0].repository: ",
        ),
        (
            "registry.example.com/",
            "https://registry.example.com/",
            "is a URL",
        ),
        (
            "shop/web",
            "Shop/web",
            "spec.images[0].repository: \"Shop/web\" is not a repository path",
        ),
        ("{name: web,", "{name: Web,", "spec.images[0].name"),
        (
            "{name: web,",
            "{name: web, interval: 0s,",
            "spec.images[0].interval: must be at least 1s",
        ),
        (
            "{name: web,",
            "{name: web, interval: soon,",
            "spec.images[0].interval: \"soon\" is not a duration",
        ),
        (
            "{name: web,",
            "{name: web, environment: staging,",
            "spec.images[0].environment: \"staging\" is promoted from \"dev\"",
        ),
        (
            "{name: web,",
            "{name: web, environment: qa,",
            "spec.images[0].environment: names \"qa\"",
        ),
        (
            "{name: web,",
            "{name: web, credentialsFile: a.json, credentialsSecret: {name: b},",
            "spec.images[0].credentialsSecret: give either",
        ),
        (
            "{name: web,",
            "{name: web, credentialsSecret: {name: Pull},",
            "spec.images[0].credentialsSecret.name",
        ),
        (
            "{name: web,",
            "{name: web, group: Shop,",
            "spec.images[0].group",
        ),
        ("{name: web,", "{name: web, pinDigest: maybe,", "pinDigest"),
        (
            "\">=1\"",
            "\">=x\"",
            "field spec.images[0].policy: semver.range: \">=x\" is not a version range",
        ),
        (
            "{range: \">=1\"}",
            "{rang: \">=1\"}",
            "spec.images[0].policy",
        ),
    ];
    for (from, to, expected) in cases {
        let text = with_images(&source.replace(from, to));
        let err = parse_err(&text);
        assert!(err.contains(expected), "{from} -> {to}: {err}");
    }
}

#[test]
fn image_sources_must_not_collide_and_a_group_enters_one_environment() {
    let two = |a: &str, b: &str| {
        with_images(&format!(
            "    - {{name: web, repository: r.example.com/web, policy: {{semver: {{range: \">=1\"}}}}{a}}}\n    - {{name: api, repository: r.example.com/api, policy: {{semver: {{range: \">=1\"}}}}{b}}}\n"
        ))
    };
    assert!(parse(Path::new("p.yaml"), &two(", group: shop", ", group: shop")).is_ok());
    let err = parse_err(&two("", "").replace("name: api", "name: web"));
    assert!(
        err.contains("spec.images[1].name: \"web\" is listed twice (also spec.images[0])"),
        "{err}"
    );
    let err = parse_err(&two(", kustomizeName: app", ", kustomizeName: app"));
    assert!(err.contains("spec.images[1].kustomizeName: \"app\" in environment \"dev\" is already set by spec.images[0]"), "{err}");
    let text = two(", group: shop", ", group: shop").replace(
        "    - name: prod\n",
        "    - name: lab\n      source: {overlay: environments/lab}\n    - name: prod\n",
    );
    let err = parse_err(&text.replace("api, policy", "api, environment: lab, policy"));
    assert!(err.contains("spec.images[1].group: group \"shop\" enters environment \"dev\" (spec.images[0]), this source enters \"lab\""), "{err}");
}
