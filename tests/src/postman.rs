//! The credentials the Postman collection is run with, as a user of an enforcing platform has
//! them (docs/security.md): a partner key per affiliate it calls as, and an operator's token
//! for reverts, retries and the version switch. Shared by the local run (`make postman-test`)
//! and the cluster's (`make e2e`).

/// The affiliates one run calls as. The campaigns and rate-limit folders count exactly, so
/// each run has affiliates of its own there (a reused database or cluster keeps older runs').
pub struct PostmanCredentials {
    pub campaigns_affiliate: String,
    pub rate_limit_affiliate: String,
}

impl PostmanCredentials {
    /// `run` names the run's own affiliates (e.g. `local`, `e2e`).
    pub fn new(run: &str) -> Self {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        Self {
            campaigns_affiliate: format!("AFILIADO_CAMP_{run}_{suffix}"),
            rate_limit_affiliate: format!("AFILIADO_RL_{run}_{suffix}"),
        }
    }

    /// `(collection variable, affiliate)` of each partner key the collection sends: it calls
    /// as AFILIADO_001, its batch as AFILIADO_002, its API_DIRECT event as AFILIADO_API, its
    /// campaigns and rate-limit folders as this run's own affiliates.
    pub fn partner_keys(&self) -> [(&'static str, &str); 5] {
        [
            ("partner_key", "AFILIADO_001"),
            ("partner_key_lote", "AFILIADO_002"),
            ("partner_key_campanas", &self.campaigns_affiliate),
            ("partner_key_api", "AFILIADO_API"),
            ("partner_key_rl", &self.rate_limit_affiliate),
        ]
    }

    /// newman's `--env-var` arguments: the run's affiliates, `keys` (`(variable,
    /// Authorization value)` for each of [`Self::partner_keys`]) and the operator's token.
    pub fn env_args(&self, keys: &[(&str, String)], operator: &str) -> Vec<String> {
        let bare = |authorization: &str| {
            authorization
                .strip_prefix("Bearer ")
                .unwrap_or(authorization)
                .to_owned()
        };
        [
            ("afiliado_campanas", self.campaigns_affiliate.clone()),
            ("afiliado_rl", self.rate_limit_affiliate.clone()),
            ("operator_token", bare(operator)),
        ]
        .into_iter()
        .chain(keys.iter().map(|(variable, key)| (*variable, bare(key))))
        .flat_map(|(variable, value)| ["--env-var".to_owned(), format!("{variable}={value}")])
        .collect()
    }
}
