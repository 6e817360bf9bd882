//! restic's encryption: AES-256-CTR with a Poly1305-AES MAC over the ciphertext
//! (`IV || CIPHERTEXT || MAC`, 32 bytes of overhead), through the `aes256ctr_poly1305aes` crate
//! (the one rustic uses), and the scrypt key files that unlock the master key.

use aes256ctr_poly1305aes::aead::{AeadInPlace, Nonce};
use aes256ctr_poly1305aes::{Aes256CtrPoly1305Aes, Key as AeadKey, Tag};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Bytes an encrypted file or blob carries beyond its plaintext (IV and MAC).
pub const OVERHEAD: usize = 32;

/// Largest scrypt cost accepted from a key file (N = 2^20, restic's maximum calibration is lower).
const MAX_LOG_N: u8 = 20;

/// The repository's master key (or a key derived from a password): 32 bytes for AES-256, 16 for
/// the MAC's AES key `k`, 16 for its `r` (masked by Poly1305 as it is used).
#[derive(Clone)]
pub struct Key(AeadKey);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Fills `buf` from the system's random source.
pub fn random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the system random source failed");
}

impl Key {
    /// A new random key.
    pub fn random() -> Key {
        let mut k = AeadKey::default();
        random(&mut k);
        Key(k)
    }

    /// From 64 key bytes (encrypt, k, r).
    fn from_bytes(b: &[u8]) -> Key {
        Key(*AeadKey::from_slice(b))
    }

    /// Encrypts `plain`: a new random IV, the ciphertext, the MAC.
    pub fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        let mut iv = Nonce::<Aes256CtrPoly1305Aes>::default();
        random(&mut iv);
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.extend_from_slice(&iv);
        out.extend_from_slice(plain);
        let tag = Aes256CtrPoly1305Aes::new(&self.0)
            .encrypt_in_place_detached(&iv, &[], &mut out[16..])
            .expect("AES-CTR encrypts any length");
        out.extend_from_slice(&tag);
        out
    }

    /// Decrypts `data` (`IV || CIPHERTEXT || MAC`); `None` when it is too short or its MAC does not
    /// match (damaged, or another key's).
    pub fn decrypt(&self, data: &[u8]) -> Option<Vec<u8>> {
        if data.len() < OVERHEAD {
            return None;
        }
        let (iv, rest) = data.split_at(16);
        let (ct, tag) = rest.split_at(rest.len() - 16);
        let mut out = ct.to_vec();
        Aes256CtrPoly1305Aes::new(&self.0)
            .decrypt_in_place_detached(
                Nonce::<Aes256CtrPoly1305Aes>::from_slice(iv),
                &[],
                &mut out,
                Tag::from_slice(tag),
            )
            .ok()?;
        Some(out)
    }

    fn to_master_json(&self) -> MasterKey {
        MasterKey {
            mac: MacKey { k: B64.encode(&self.0[32..48]), r: B64.encode(&self.0[48..64]) },
            encrypt: B64.encode(&self.0[0..32]),
        }
    }
}

/// The master key as a key file's `data` holds it.
#[derive(Serialize, Deserialize)]
struct MasterKey {
    mac: MacKey,
    encrypt: String,
}

#[derive(Serialize, Deserialize)]
struct MacKey {
    k: String,
    r: String,
}

/// A file of `keys/`: the scrypt parameters and the master key encrypted with the key derived from
/// a password.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct KeyFile {
    /// Host that made it.
    #[serde(default)]
    pub hostname: String,
    /// User that made it.
    #[serde(default)]
    pub username: String,
    /// `scrypt`.
    pub kdf: String,
    /// scrypt cost (a power of two).
    #[serde(rename = "N")]
    pub n: u64,
    /// scrypt block size.
    pub r: u32,
    /// scrypt parallelism.
    pub p: u32,
    /// When it was made (RFC 3339).
    #[serde(default)]
    pub created: String,
    /// The encrypted master key, base64.
    pub data: String,
    /// The scrypt salt, base64.
    pub salt: String,
}

/// Why a key file does not open.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    /// Not a key file we can use (what is wrong).
    Bad(String),
    /// The password does not open it.
    WrongPassword,
}

fn derive(password: &[u8], salt: &[u8], log_n: u8, r: u32, p: u32) -> Result<Key, KeyError> {
    let params = scrypt::Params::new(log_n, r, p, 64).map_err(|e| KeyError::Bad(format!("scrypt parameters: {e}")))?;
    let mut out = [0u8; 64];
    scrypt::scrypt(password, salt, &params, &mut out).map_err(|e| KeyError::Bad(format!("scrypt: {e}")))?;
    Ok(Key::from_bytes(&out))
}

fn b64(s: &str, what: &str) -> Result<Vec<u8>, KeyError> {
    B64.decode(s).map_err(|e| KeyError::Bad(format!("{what}: not base64: {e}")))
}

impl KeyFile {
    /// A key file for `master` under `password` (scrypt N = 2^15, r = 8, p = 1, a 64-byte salt).
    pub fn new(master: &Key, password: &[u8], hostname: &str, username: &str, created: &str) -> KeyFile {
        let mut salt = [0u8; 64];
        random(&mut salt);
        let (log_n, r, p) = (15u8, 8, 1);
        let user_key = derive(password, &salt, log_n, r, p).expect("fixed parameters are valid");
        let json = serde_json::to_vec(&master.to_master_json()).expect("serializable");
        KeyFile {
            hostname: hostname.into(),
            username: username.into(),
            kdf: "scrypt".into(),
            n: 1 << log_n,
            r,
            p,
            created: created.into(),
            data: B64.encode(user_key.encrypt(&json)),
            salt: B64.encode(salt),
        }
    }

    /// The master key this file holds, if `password` opens it.
    pub fn open(&self, password: &[u8]) -> Result<Key, KeyError> {
        if self.kdf != "scrypt" {
            return Err(KeyError::Bad(format!("kdf {:?}: only scrypt is known", self.kdf)));
        }
        if !self.n.is_power_of_two() || self.n < 2 || self.n > 1 << MAX_LOG_N {
            return Err(KeyError::Bad(format!("N = {}: expected a power of two up to 2^{MAX_LOG_N}", self.n)));
        }
        if self.r == 0 || self.r > 32 || self.p == 0 || self.p > 16 {
            return Err(KeyError::Bad(format!("r = {}, p = {}: expected 1..=32 and 1..=16", self.r, self.p)));
        }
        let salt = b64(&self.salt, "salt")?;
        let data = b64(&self.data, "data")?;
        let user_key = derive(password, &salt, self.n.trailing_zeros() as u8, self.r, self.p)?;
        let json = user_key.decrypt(&data).ok_or(KeyError::WrongPassword)?;
        let mk: MasterKey =
            serde_json::from_slice(&json).map_err(|e| KeyError::Bad(format!("the master key JSON: {e}")))?;
        let (enc, k, r) = (b64(&mk.encrypt, "encrypt")?, b64(&mk.mac.k, "mac.k")?, b64(&mk.mac.r, "mac.r")?);
        if enc.len() != 32 || k.len() != 16 || r.len() != 16 {
            return Err(KeyError::Bad(
                "the master key has keys of the wrong length (expected 32, 16, 16 bytes)".into(),
            ));
        }
        let mut all = Vec::with_capacity(64);
        all.extend_from_slice(&enc);
        all.extend_from_slice(&k);
        all.extend_from_slice(&r);
        Ok(Key::from_bytes(&all))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let k = Key::random();
        let c = k.encrypt(b"hello");
        assert_eq!(c.len(), 5 + OVERHEAD);
        assert_eq!(k.decrypt(&c).unwrap(), b"hello");
        let mut bad = c.clone();
        bad[20] ^= 1;
        assert!(k.decrypt(&bad).is_none());
        assert!(Key::random().decrypt(&c).is_none());
        assert!(k.decrypt(&c[..31]).is_none());
    }

    #[test]
    fn key_files_open_with_their_password_only() {
        let master = Key::random();
        let kf = KeyFile::new(&master, b"pw", "h", "u", "2024-01-01T00:00:00Z");
        let got = kf.open(b"pw").unwrap();
        assert_eq!(got.decrypt(&master.encrypt(b"x")).unwrap(), b"x");
        assert_eq!(kf.open(b"other").unwrap_err(), KeyError::WrongPassword);
        let huge = KeyFile { n: 1 << 40, ..kf.clone() };
        assert!(matches!(huge.open(b"pw"), Err(KeyError::Bad(_))));
    }
}
