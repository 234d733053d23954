//! Property tests: any document Stagehand encrypts decrypts to the same data.

use proptest::prelude::*;
use stagehand::secrets::{self, EncryptOptions, Format, Identities};

fn identities() -> (Identities, String) {
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let mut ids = Identities::new();
    use age::secrecy::ExposeSecret as _;
    ids.add_text("generated", id.to_string().expose_secret(), false)
        .expect("a generated identity parses");
    (ids, recipient)
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i32>().prop_map(|i| serde_json::json!(f64::from(i))),
        // Mantissa and exponent small enough that serde_json (the oracle here) parses exactly.
        (any::<i32>(), -10i32..10).prop_map(|(m, e)| serde_json::json!(
            format!("{m}e{e}").parse::<f64>().expect("a valid float")
        )),
        any::<String>().prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn as_floats(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Number(n) => serde_json::json!(n.as_f64().expect("finite numbers only")),
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(as_floats).collect())
        }
        serde_json::Value::Object(o) => {
            serde_json::Value::Object(o.into_iter().map(|(k, v)| (k, as_floats(v))).collect())
        }
        other => other,
    }
}

/// Any text except the YAML 1.1 line breaks NEL, LS and PS: the generator's serialiser (libyaml)
/// writes them raw as line breaks, which our YAML 1.2 reader keeps as characters (a known gap,
/// recorded in the issue note), so they would test the serialiser, not the round trip.
fn yaml_doc() -> impl Strategy<Value = Vec<(String, String)>> {
    let text = any::<String>().prop_map(|s| s.replace(['\u{85}', '\u{2028}', '\u{2029}'], ""));
    prop::collection::vec(("[a-zA-Z][a-zA-Z0-9_.-]{0,10}", text), 1..8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn json_documents_round_trip_through_encryption(
        map in prop::collection::btree_map("[a-z]{1,8}", json_value(), 0..6)
    ) {
        let (ids, recipient) = identities();
        let original = serde_json::Value::Object(map.into_iter().collect());
        let text = serde_json::to_vec(&original).expect("serializable");
        let options = EncryptOptions { recipients: vec![recipient], ..EncryptOptions::default() };
        let enc = secrets::encrypt(&text, Format::Json, &options, "p.json").expect("encrypts");
        let plain = secrets::decrypt(&enc, Format::Json, &ids, "p.json").expect("decrypts");
        let back: serde_json::Value = serde_json::from_slice(plain.expose()).expect("valid JSON");
        // sops reads every JSON number as a float64, so compare numbers as floats.
        prop_assert_eq!(as_floats(back), as_floats(original));
    }

    #[test]
    fn yaml_strings_of_any_content_round_trip_through_encryption(entries in yaml_doc()) {
        let (ids, recipient) = identities();
        let mut map = serde_yaml_ng::Mapping::new();
        for (k, v) in &entries {
            map.insert(k.clone().into(), v.clone().into());
        }
        let text = serde_yaml_ng::to_string(&map).expect("serializable");
        let options = EncryptOptions { recipients: vec![recipient], ..EncryptOptions::default() };
        let enc = secrets::encrypt(text.as_bytes(), Format::Yaml, &options, "p.yaml").expect("encrypts");
        let plain = secrets::decrypt(&enc, Format::Yaml, &ids, "p.yaml").expect("decrypts");
        let back: serde_yaml_ng::Mapping = serde_yaml_ng::from_slice(plain.expose()).expect("valid YAML");
        prop_assert_eq!(back, map);
    }
}
