use super::*;

const KUSTOMIZATION: &str = "\
# Staging overlay: owned by the shop team.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization

resources:
  - ../../base   # shared manifests

images:
  # the web front end
  - name: shop/web
    newTag: \"1.4.0\"   # pinned by promotion
  - name: shop/worker
    newName: registry.example.test/shop/worker
    newTag: 2.0.1

replicas:
  - name: web
    count: 3
";

/// A scalar written as `source`.
fn written(source: &str) -> Scalar {
    scalar(&format!("v: {source}\n"), &["v".into()]).expect("a scalar")
}

/// An image entry whose fields are written as given.
fn image(name: &str, tag: Option<&str>, digest: Option<&str>) -> Image {
    Image {
        name: Some(written(name)),
        new_name: None,
        new_tag: tag.map(written),
        tag_suffix: None,
        digest: digest.map(written),
    }
}

fn text_of(field: &Option<Scalar>) -> Option<&str> {
    field.as_ref().map(|s| s.text.as_str())
}

#[test]
fn changing_a_tag_touches_only_that_line_and_keeps_its_comment_and_quotes() {
    let edited =
        set_images(KUSTOMIZATION, &[image("shop/web", Some("1.5.0"), None)]).expect("edits");
    let changed: Vec<_> = KUSTOMIZATION
        .lines()
        .zip(edited.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(
        changed,
        [(
            "    newTag: \"1.4.0\"   # pinned by promotion",
            "    newTag: \"1.5.0\"   # pinned by promotion"
        )]
    );
    assert_eq!(edited.lines().count(), KUSTOMIZATION.lines().count());
}

#[test]
fn the_target_entry_mirrors_the_source_entry_and_a_new_image_is_appended_in_the_same_layout() {
    let edited = set_images(
        KUSTOMIZATION,
        &[
            image("shop/worker", None, Some("sha256:abc")),
            image("shop/cron", Some("0.1.0"), None),
        ],
    )
    .expect("edits");
    assert!(edited.contains("  - name: shop/worker\n    digest: sha256:abc\n  - name: shop/cron\n    newTag: 0.1.0\n\nreplicas:"), "{edited}");
    assert!(!edited.contains("2.0.1"));
}

#[test]
fn a_kustomization_without_images_gets_a_list_at_the_end() {
    let text = "resources:\n- ../../base\n";
    let edited = set_images(text, &[image("app", Some("\"1.0\""), None)]).expect("edits");
    assert_eq!(
        edited,
        "resources:\n- ../../base\nimages:\n- name: app\n  newTag: \"1.0\"\n"
    );
    assert_eq!(
        text_of(&images(&edited).expect("parses")[0].new_tag),
        Some("1.0")
    );
}

#[test]
fn a_nested_scalar_is_set_and_numbers_stay_numbers() {
    let text = "spec:\n  # how many\n  replicas: 2 # keep low\n  template: {}\n";
    let edited =
        set_scalar(text, &["spec".into(), "replicas".into()], &written("5")).expect("edits");
    assert_eq!(
        edited,
        "spec:\n  # how many\n  replicas: 5 # keep low\n  template: {}\n"
    );
}

#[test]
fn a_missing_field_and_a_flow_style_list_are_refused_by_name() {
    let err = set_scalar("a: 1\n", &["b".into()], &written("1")).expect_err("missing");
    assert_eq!(err, Error::MissingField { field: "b".into() });
    let err = set_images(
        "images: [{name: a, newTag: x}]\n",
        &[image("a", Some("y"), None)],
    )
    .expect_err("flow style");
    assert!(
        matches!(err, Error::Unsupported { ref field, .. } if field == "images"),
        "{err}"
    );
}

#[test]
fn images_are_read_with_their_fields() {
    let list = images(KUSTOMIZATION).expect("parses");
    assert_eq!(list.len(), 2);
    assert_eq!(
        (
            text_of(&list[0].name),
            text_of(&list[0].new_tag),
            text_of(&list[0].digest)
        ),
        (Some("shop/web"), Some("1.4.0"), None)
    );
    assert_eq!(
        text_of(&list[1].new_name),
        Some("registry.example.test/shop/worker")
    );
}
