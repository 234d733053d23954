//! sops's value encryption: AES-256-GCM with a 32-byte IV, the value's key path as additional
//! data, and the `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]` envelope.

use std::sync::LazyLock;

use aes_gcm::aead::consts::{U12, U32};
use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use regex::Regex;
use zeroize::Zeroizing;

use super::value::{Comment, Value};
use crate::yaml::number::format_fixed;

/// The 32-byte key every value of one file is encrypted with.
pub struct DataKey(pub(crate) Zeroizing<[u8; 32]>);

impl DataKey {
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(key.as_mut());
        DataKey(key)
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let key: [u8; 32] = bytes.try_into().ok()?;
        Some(DataKey(Zeroizing::new(key)))
    }
}

const TAG_LEN: usize = 16;

/// Go's pattern, greedy groups included, so that odd inputs split the way sops splits them.
static ENVELOPE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:(.+)\]")
        .expect("the envelope pattern is a valid regex")
});

/// Why one value could not be opened; the caller adds the file and key path.
#[derive(Debug, PartialEq)]
pub enum OpenError {
    Malformed,
    Authentication,
    UnknownType(String),
    BadPlaintext(&'static str),
}

struct Envelope<'a> {
    data: Vec<u8>,
    iv: Vec<u8>,
    tag: Vec<u8>,
    kind: &'a str,
}

fn parse(s: &str) -> Result<Envelope<'_>, OpenError> {
    let caps = ENVELOPE.captures(s).ok_or(OpenError::Malformed)?;
    let group = |i: usize| caps.get(i).expect("the pattern has four groups").as_str();
    let decode = |i: usize| STANDARD.decode(group(i)).map_err(|_| OpenError::Malformed);
    let env = Envelope {
        data: decode(1)?,
        iv: decode(2)?,
        tag: decode(3)?,
        kind: caps.get(4).expect("the pattern has four groups").as_str(),
    };
    if env.tag.len() != TAG_LEN {
        return Err(OpenError::Malformed);
    }
    Ok(env)
}

fn open_bytes(
    key: &DataKey,
    env: &Envelope<'_>,
    aad: &str,
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let mut msg = Vec::with_capacity(env.data.len() + TAG_LEN);
    msg.extend_from_slice(&env.data);
    msg.extend_from_slice(&env.tag);
    let payload = Payload {
        msg: &msg,
        aad: aad.as_bytes(),
    };
    let key = aes_gcm::Key::<AesGcm<Aes256, U32>>::from_slice(key.0.as_ref());
    // sops always writes 32-byte IVs; Go's GCM takes whatever length the file carries.
    let plain = match env.iv.len() {
        32 => AesGcm::<Aes256, U32>::new(key).decrypt(Nonce::from_slice(&env.iv), payload),
        12 => AesGcm::<Aes256, U12>::new(key).decrypt(Nonce::from_slice(&env.iv), payload),
        _ => return Err(OpenError::Malformed),
    };
    plain
        .map(Zeroizing::new)
        .map_err(|_| OpenError::Authentication)
}

/// Decrypts one value as sops's `Cipher.Decrypt` does: the empty string stays empty, and the
/// `type:` field says how to read the plaintext.
pub fn open(key: &DataKey, s: &str, aad: &str) -> Result<Value, OpenError> {
    if s.is_empty() {
        return Ok(Value::str(""));
    }
    let env = parse(s)?;
    let kind = env.kind;
    if !matches!(
        kind,
        "str" | "int" | "float" | "bytes" | "bool" | "time" | "comment"
    ) {
        return Err(OpenError::UnknownType(kind.to_owned()));
    }
    let plain = open_bytes(key, &env, aad)?;
    let text = || std::str::from_utf8(&plain).map_err(|_| OpenError::BadPlaintext("str"));
    Ok(match kind {
        // Go strings may hold any bytes; keep non-UTF-8 as bytes so nothing is lost.
        "str" => match std::str::from_utf8(&plain) {
            Ok(t) => Value::str(t),
            Err(_) => Value::Bytes(plain),
        },
        "bytes" => match std::str::from_utf8(&plain) {
            Ok(t) => Value::str(t),
            Err(_) => Value::Bytes(plain),
        },
        "int" => Value::Int(parse_go_int(text()?).ok_or(OpenError::BadPlaintext("int"))?),
        "float" => Value::Float(parse_go_float(text()?).ok_or(OpenError::BadPlaintext("float"))?),
        "bool" => Value::Bool(parse_go_bool(text()?).ok_or(OpenError::BadPlaintext("bool"))?),
        "time" => Value::Time(Zeroizing::new(
            crate::yaml::time::normalize_rfc3339(text()?).ok_or(OpenError::BadPlaintext("time"))?,
        )),
        "comment" => Value::Comment(Comment::new(text()?)),
        other => unreachable!("type {other} was checked above"),
    })
}

/// `strconv.Atoi`: an optional sign and decimal digits.
fn parse_go_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `strconv.ParseFloat` for what sops writes ('f' format, plus Go's special spellings).
fn parse_go_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => s.replace('_', "").parse().ok(),
    }
}

/// `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The bytes sops hashes for a plaintext value (`sops.ToBytes`) and encrypts for it.
/// `None` for values that are not leaves.
pub fn plain_bytes(v: &Value) -> Option<Zeroizing<Vec<u8>>> {
    let bytes = match v {
        Value::Str(s) | Value::Time(s) => s.as_bytes().to_vec(),
        Value::Bytes(b) => b.to_vec(),
        Value::Int(i) => i.to_string().into_bytes(),
        Value::Float(f) => format_fixed(*f).into_bytes(),
        Value::Bool(true) => b"True".to_vec(),
        Value::Bool(false) => b"False".to_vec(),
        Value::Comment(c) => c.text.as_bytes().to_vec(),
        Value::Null | Value::Map(_) | Value::Seq(_) => return None,
    };
    Some(Zeroizing::new(bytes))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Str(_) => "str",
        Value::Bytes(_) => "str",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Bool(_) => "bool",
        Value::Time(_) => "time",
        Value::Comment(_) => "comment",
        Value::Null | Value::Map(_) | Value::Seq(_) => "",
    }
}

/// Encrypts one leaf as sops's `Cipher.Encrypt` does; an empty string (or comment) stays empty.
pub fn seal(key: &DataKey, v: &Value, aad: &str) -> String {
    let plain = plain_bytes(v).expect("seal is only called on leaves");
    if plain.is_empty() && matches!(v, Value::Str(_) | Value::Bytes(_) | Value::Comment(_)) {
        return String::new();
    }
    seal_bytes(key, &plain, aad, type_name(v))
}

pub fn seal_bytes(key: &DataKey, plain: &[u8], aad: &str, kind: &str) -> String {
    let mut iv = [0u8; 32];
    OsRng.fill_bytes(&mut iv);
    let cipher = AesGcm::<Aes256, U32>::new(aes_gcm::Key::<AesGcm<Aes256, U32>>::from_slice(
        key.0.as_ref(),
    ));
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&iv),
            Payload {
                msg: plain,
                aad: aad.as_bytes(),
            },
        )
        .expect("AES-GCM encryption cannot fail for inputs below 64 GiB");
    let (data, tag) = sealed.split_at(sealed.len() - TAG_LEN);
    format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{kind}]",
        STANDARD.encode(data),
        STANDARD.encode(iv),
        STANDARD.encode(tag)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_under_its_own_key_path() {
        let key = DataKey::generate();
        let sealed = seal(&key, &Value::Int(42), "a:b:");
        assert!(sealed.ends_with(",type:int]"));
        assert_eq!(open(&key, &sealed, "a:b:"), Ok(Value::Int(42)));
        assert_eq!(open(&key, &sealed, "a:c:"), Err(OpenError::Authentication));
    }

    #[test]
    fn an_unknown_type_is_reported_by_name() {
        let key = DataKey::generate();
        let sealed = seal(&key, &Value::str("x"), "k:").replace("type:str", "type:blob");
        assert_eq!(
            open(&key, &sealed, "k:"),
            Err(OpenError::UnknownType("blob".into()))
        );
    }

    #[test]
    fn a_broken_envelope_is_malformed() {
        let key = DataKey::generate();
        assert_eq!(
            open(&key, "ENC[AES256_GCM,data:!!,iv:a,tag:b,type:str]", "k:"),
            Err(OpenError::Malformed)
        );
        assert_eq!(open(&key, "hello", "k:"), Err(OpenError::Malformed));
    }
}
