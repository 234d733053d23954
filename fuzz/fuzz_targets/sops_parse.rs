//! Fuzzes the SOPS readers of every store: no input may panic, and any plaintext Stagehand
//! accepts for encryption must decrypt again.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use stagehand::secrets::{self, EncryptOptions, Format, Identities};

fn keys() -> &'static (Identities, String) {
    static KEYS: OnceLock<(Identities, String)> = OnceLock::new();
    KEYS.get_or_init(|| {
        // A fixed identity made for fuzzing only, so that crashes reproduce.
        let secret = "AGE-SECRET-KEY-1C7EMEV9FKZX2GHTGAL8ZA8R49ECSDDQHA6QHULRGRV8RZ3S7T0RSHPT29D";
        let mut ids = Identities::new();
        ids.add_text("fuzz", secret, false)
            .expect("the fixed identity parses");
        let recipient = ids.recipients().remove(0);
        (ids, recipient)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let format = match selector % 5 {
        0 => Format::Yaml,
        1 => Format::Json,
        2 => Format::Dotenv,
        3 => Format::Ini,
        _ => Format::Binary,
    };
    let (ids, recipient) = keys();
    // Reading as a sops file: must return, never panic.
    let _ = secrets::is_encrypted(input, format);
    let _ = secrets::decrypt(input, format, ids, "fuzz");
    // Reading as plaintext and writing: what encrypts must decrypt.
    let options = EncryptOptions {
        recipients: vec![recipient.clone()],
        ..EncryptOptions::default()
    };
    if let Ok(encrypted) = secrets::encrypt(input, format, &options, "fuzz") {
        if let Err(e) = secrets::decrypt(&encrypted, format, ids, "fuzz") {
            panic!("encrypted output does not decrypt: {e}");
        }
    }
});
