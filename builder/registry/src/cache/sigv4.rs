//! AWS Signature Version 4 for S3 requests
//! (<https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html>):
//! the canonical request, the string to sign, the derived key and the
//! `Authorization` header. HMAC-SHA256 is written here on `sha2` (RFC
//! 2104): a signing client needs nothing else, where the AWS SDK would
//! bring hundreds of crates.

use sha2::{Digest as _, Sha256};

/// The SHA-256 of an empty body, hex.
pub(super) const EMPTY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Credentials that sign a request.
#[derive(Clone)]
pub(super) struct Credentials {
    pub(super) access_key_id: String,
    pub(super) secret_access_key: String,
    /// Temporary credentials' token (`x-amz-security-token`), or empty.
    pub(super) session_token: String,
}

/// A request to sign: its method, host (with a non-default port), path
/// (already URI-encoded), query (canonical: sorted, encoded) and the
/// payload's SHA-256 in hex.
pub(super) struct Request<'a> {
    pub(super) method: &'a str,
    pub(super) host: &'a str,
    pub(super) path: &'a str,
    pub(super) query: &'a str,
    pub(super) payload_sha256: &'a str,
    /// Other headers to sign (lowercase names), sent as they are.
    pub(super) extra: &'a [(&'static str, String)],
}

/// The headers to send: `x-amz-date`, `x-amz-content-sha256`, maybe
/// `x-amz-security-token`, and `authorization`, for a request made at
/// `now` (seconds since the epoch) in `region`.
pub(super) fn sign(
    request: &Request<'_>,
    credentials: &Credentials,
    region: &str,
    now: u64,
) -> Vec<(&'static str, String)> {
    let amz_date = amz_date(now);
    let date = &amz_date[..8];
    let mut headers: Vec<(&'static str, String)> = vec![
        ("host", request.host.to_owned()),
        ("x-amz-content-sha256", request.payload_sha256.to_owned()),
        ("x-amz-date", amz_date.clone()),
    ];
    if !credentials.session_token.is_empty() {
        headers.push(("x-amz-security-token", credentials.session_token.clone()));
    }
    headers.extend(request.extra.iter().cloned());
    headers.sort();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| *k).collect();
    let signed = signed.join(";");
    let canonical_headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed}\n{}",
        request.method, request.path, request.query, request.payload_sha256
    );
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(
        format!("AWS4{}", credentials.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [region, "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    headers.retain(|(k, _)| *k != "host" && !request.extra.iter().any(|(e, _)| e == k));
    headers.push((
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            credentials.access_key_id
        ),
    ));
    headers
}

/// `YYYYMMDDTHHMMSSZ`.
fn amz_date(now: u64) -> String {
    kiln_image::image::config::rfc3339(now).replace(['-', ':'], "")
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A path or key URI-encoded as SigV4 wants: every byte but the
/// unreserved ones (and `/`, which separates segments) as `%XX`.
pub(super) fn uri_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2.
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // A key longer than a block is hashed first (test case 6).
        assert_eq!(
            hex(&hmac(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    /// AWS's documented example: GET /test.txt with a range header is not
    /// ours, so this checks the example signing key chain instead
    /// (<https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html>).
    #[test]
    fn the_signing_key_chain_matches_aws_example() {
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let mut key = hmac(format!("AWS4{secret}").as_bytes(), b"20120215");
        for part in ["us-east-1", "iam", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        assert_eq!(
            hex(&key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    /// The S3 documentation's GET example (`examplebucket`, `Range:
    /// bytes=0-9`, 2013-05-24).
    #[test]
    fn a_get_is_signed_as_aws_documents() {
        let credentials = Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: String::new(),
        };
        let extra = [("range", "bytes=0-9".to_owned())];
        let request = Request {
            method: "GET",
            host: "examplebucket.s3.amazonaws.com",
            path: "/test.txt",
            query: "",
            payload_sha256: EMPTY_SHA256,
            extra: &extra,
        };
        let headers = sign(&request, &credentials, "us-east-1", 1_369_353_600);
        let authorization = &headers
            .iter()
            .find(|(k, _)| *k == "authorization")
            .unwrap()
            .1;
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn keys_are_encoded() {
        assert_eq!(uri_encode("/b/blobs/sha256:ab"), "/b/blobs/sha256%3Aab");
        assert_eq!(uri_encode("a b"), "a%20b");
    }
}
