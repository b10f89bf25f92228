//! Secrets must never reach a log (issue 13): the demo affiliates' API keys and webhook
//! secrets, and the database password, looked for in every log a run left behind.

use std::path::Path;

use anyhow::Context;

/// The credentials of an affiliates file (`afiliados.*.api_keys`, `afiliados.*.secretos_webhook`).
pub fn affiliate_credentials(file: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    let document: serde_json::Value = serde_saphyr::from_str(&text)?;
    let mut secrets = Vec::new();
    for affiliate in document["afiliados"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, a)| a)
    {
        for field in ["api_keys", "secretos_webhook"] {
            secrets.extend(
                affiliate[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_owned)),
            );
        }
    }
    Ok(secrets)
}

/// The password of a `postgres://user:password@host/db` URL.
pub fn database_password(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    url.password().map(str::to_owned)
}

/// Every (file, secret) where a secret appears in a file under `dir`; the secret is shown
/// masked, so this report does not leak it either.
pub fn find_in_logs(dir: &Path, secrets: &[String]) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let contents = std::fs::read(&path)?;
        let text = String::from_utf8_lossy(&contents);
        for secret in secrets.iter().filter(|s| s.len() >= 6) {
            if text.contains(secret.as_str()) {
                found.push(format!("{}: {}…", path.display(), &secret[..3]));
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_credentials_are_read_and_a_leak_is_found() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let secrets = affiliate_credentials(&root.join("config/afiliados.demo.yaml")).unwrap();
        assert!(
            secrets.contains(&"sk_test_123456789".to_owned()),
            "{secrets:?}"
        );
        assert!(
            secrets.contains(&"whsec_demo_2025".to_owned()),
            "{secrets:?}"
        );

        let dir = std::env::temp_dir().join(format!("secrets-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("clean.log"), "x-api-key: [redacted]\n").unwrap();
        assert!(find_in_logs(&dir, &secrets).unwrap().is_empty());
        std::fs::write(dir.join("leaky.log"), "header sk_test_123456789 sent\n").unwrap();
        let found = find_in_logs(&dir, &secrets).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].ends_with("leaky.log: sk_…"), "{found:?}");
        assert!(!found[0].contains("sk_test_123456789"));
        std::fs::remove_dir_all(dir).unwrap();

        assert_eq!(
            database_password("postgres://aeropartners:s3cret@127.0.0.1:5433/db").as_deref(),
            Some("s3cret")
        );
    }
}
