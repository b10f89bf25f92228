//! Abuse cases against a running platform (part of `make fuzz`): what a hostile or buggy client
//! sends that a schema-driven fuzzer does not. Each case states what the platform must do and
//! fails with what it did instead; no case accepts a server error (5xx), and after them every
//! service is still ready and the data they tried to reach is intact.
//!
//! Oversized bodies and headers, a body announced and never sent, slow and silent connections,
//! deeply nested JSON and huge numbers, Unicode and NUL in strings, SQL in filters, path
//! traversal in ids and asset paths, and hundreds of concurrent connections from one client.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::local_platform::LocalPlatform;

/// One case's outcome.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub case: &'static str,
    pub passed: bool,
    /// What the platform answered (on success) or what was wrong (on failure).
    pub detail: String,
    pub seconds: f64,
}

type CaseResult = Result<String, String>;

/// Runs every case against `platform` (through the gateway, and directly at the services where
/// the gateway would hide their own answer) and prints a table. The slow-connection case waits
/// out the header read timeout (15 s by default), so it runs beside the others.
pub async fn run(platform: &LocalPlatform) -> anyhow::Result<Vec<Outcome>> {
    let abuse = Abuse::new(platform)?;
    let slow = {
        let abuse = abuse.clone();
        tokio::spawn(
            async move { timed("slow-and-silent-connections", abuse.slow_clients()).await },
        )
    };
    let mut outcomes = vec![
        timed("oversized-body", abuse.oversized_bodies()).await,
        timed("body-announced-never-sent", abuse.body_never_sent()).await,
        timed("oversized-headers", abuse.oversized_headers()).await,
        timed("deeply-nested-json", abuse.deep_nesting()).await,
        timed("huge-and-odd-numbers", abuse.huge_numbers()).await,
        timed("unicode-and-nul-in-strings", abuse.unicode()).await,
        timed("sql-in-filters", abuse.sql_in_filters()).await,
        timed("path-traversal", abuse.path_traversal()).await,
        timed("many-connections-one-client", abuse.many_connections()).await,
    ];
    outcomes.push(slow.await.context("the slow-connection case panicked")?);
    outcomes.push(timed("every-service-still-ready", abuse.still_ready()).await);

    println!("\nAbuse cases (tests/src/abuse.rs)");
    for outcome in &outcomes {
        println!(
            "  {:<4} {:<30} {:>6.1} s  {}",
            if outcome.passed { "ok" } else { "FAIL" },
            outcome.case,
            outcome.seconds,
            outcome.detail
        );
    }
    Ok(outcomes)
}

async fn timed(case: &'static str, work: impl Future<Output = CaseResult>) -> Outcome {
    let started = Instant::now();
    let result = work.await;
    Outcome {
        case,
        passed: result.is_ok(),
        detail: result.unwrap_or_else(|e| e),
        seconds: started.elapsed().as_secs_f64(),
    }
}

#[derive(Clone)]
struct Abuse {
    client: reqwest::Client,
    gateway: String,
    gateway_address: SocketAddr,
    /// Services answered directly: their own limits, not the gateway's.
    direct: Vec<(&'static str, String, SocketAddr)>,
    services: Vec<String>,
}

impl Abuse {
    fn new(platform: &LocalPlatform) -> anyhow::Result<Self> {
        let address = |service: &str| -> anyhow::Result<SocketAddr> {
            Ok(platform
                .url(service)
                .trim_start_matches("http://")
                .parse()?)
        };
        let direct = [
            "payments",
            "campaigns-primary",
            "event-collector-a",
            "reports-a",
        ]
        .into_iter()
        .map(|s| Ok((s, platform.url(s), address(s)?)))
        .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()?,
            gateway: platform.url("gateway"),
            gateway_address: address("gateway")?,
            direct,
            services: crate::local_platform::SERVICES
                .iter()
                .map(|(name, _)| platform.url(name))
                .collect(),
        })
    }

    /// Every address the body and header limits are checked at: the gateway and each service.
    fn targets(&self) -> Vec<(&'static str, SocketAddr)> {
        std::iter::once(("gateway", self.gateway_address))
            .chain(
                self.direct
                    .iter()
                    .map(|(name, _, address)| (*name, *address)),
            )
            .collect()
    }

    /// Repeated: whether the client reads the 413 or a reset is a race (see
    /// `platform::http::serve`'s lingering close).
    async fn oversized_bodies(&self) -> CaseResult {
        // 2 MiB of valid JSON: the limit is 64 KiB.
        let body = serde_json::json!({ "id_afiliado": "x".repeat(2 << 20) }).to_string();
        let urls = [
            format!("{}/pagos", self.gateway),
            format!("{}/campaigns", self.gateway),
            format!("{}/event-collector/events", self.gateway),
            format!("{}/pagos", self.direct[0].1),
        ];
        let mut failures = Vec::new();
        let mut sent = 0;
        for _ in 0..10 {
            for url in &urls {
                sent += 1;
                let answer = self
                    .client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                let outcome = match answer {
                    Ok(answer) => expect_problem(url, answer.status().as_u16(), &[413], answer)
                        .await
                        .err(),
                    Err(error) => Some(format!("{url}: {}", error_chain(&error))),
                };
                failures.extend(outcome);
            }
        }
        if let Some(first) = failures.first() {
            return Err(format!("{} of {sent} requests: {first}", failures.len()));
        }
        Ok(format!(
            "{sent} bodies of 2 MiB (gateway: pagos, campaigns, events; payments) → 413 problem+json, read by the client every time"
        ))
    }

    async fn body_never_sent(&self) -> CaseResult {
        let mut seen = Vec::new();
        for (name, address) in self.targets() {
            let path = match name {
                "campaigns-primary" => "/campaigns",
                "event-collector-a" => "/event-collector/events",
                "reports-a" => "/api/reports/payments",
                _ => "/pagos",
            };
            let request = format!(
                "POST {path} HTTP/1.1\r\nhost: abuse\r\ncontent-type: application/json\r\ncontent-length: 1000000000\r\n\r\n"
            );
            let started = Instant::now();
            let answer = raw(address, request.as_bytes(), Duration::from_secs(5))
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            let status = status_of(&answer);
            // reports has no POST there: its 405 comes before any body is read, as it should.
            if !matches!(status, Some(413 | 405)) {
                return Err(format!("{name}: {}", first_line(&answer)));
            }
            seen.push(format!(
                "{name} {} in {} ms",
                status.unwrap_or(0),
                started.elapsed().as_millis()
            ));
        }
        Ok(format!(
            "a 1 GB Content-Length with no body → {}",
            seen.join(", ")
        ))
    }

    async fn oversized_headers(&self) -> CaseResult {
        let mut seen = Vec::new();
        for (name, address) in self.targets() {
            let big = format!(
                "GET /health HTTP/1.1\r\nhost: abuse\r\nx-padding: {}\r\n\r\n",
                "a".repeat(64 * 1024)
            );
            let answer = raw(address, big.as_bytes(), Duration::from_secs(5))
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            if status_of(&answer) != Some(431) {
                return Err(format!("{name}, a 64 KiB header: {}", first_line(&answer)));
            }
            let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
            let answer = raw(
                address,
                format!("GET /health HTTP/1.1\r\nhost: abuse\r\n{many}\r\n").as_bytes(),
                Duration::from_secs(5),
            )
            .await
            .map_err(|e| format!("{name}: {e}"))?;
            if status_of(&answer) != Some(431) {
                return Err(format!("{name}, 200 headers: {}", first_line(&answer)));
            }
            seen.push(name);
        }
        Ok(format!(
            "a 64 KiB header and 200 headers → 431 at {}",
            seen.join(", ")
        ))
    }

    /// A connection that sends nothing, and one that sends a header line a second and never
    /// ends its head, are both closed by the header read timeout; meanwhile others are served.
    async fn slow_clients(&self) -> CaseResult {
        let limit = Duration::from_secs(15 + 5);
        let started = Instant::now();
        let mut silent = TcpStream::connect(self.gateway_address)
            .await
            .map_err(|e| e.to_string())?;
        let mut slow = TcpStream::connect(self.gateway_address)
            .await
            .map_err(|e| e.to_string())?;
        slow.write_all(b"GET /health HTTP/1.1\r\nhost: abuse\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let trickle = async {
            for line in 0.. {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if slow
                    .write_all(format!("x-slow-{line}: a\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return started.elapsed();
                }
                if started.elapsed() > limit {
                    return limit;
                }
            }
            limit
        };
        let silent_closed = async {
            let mut buffer = [0u8; 256];
            match tokio::time::timeout(limit, silent.read(&mut buffer)).await {
                Ok(Ok(0) | Err(_)) => Some(started.elapsed()),
                Ok(Ok(_)) | Err(_) => None,
            }
        };
        let served_meanwhile = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            self.client
                .get(format!("{}/health", self.gateway))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        };
        let (cut_after, silent_after, served) =
            tokio::join!(trickle, silent_closed, served_meanwhile);
        let silent_after = silent_after.ok_or("a silent connection was still open after 20 s")?;
        if cut_after >= limit {
            return Err("a connection trickling its headers was still open after 20 s".into());
        }
        if !served {
            return Err("another client was not served meanwhile".into());
        }
        Ok(format!(
            "silent connection closed after {:.1} s, a header line a second cut after {:.1} s; others served meanwhile",
            silent_after.as_secs_f64(),
            cut_after.as_secs_f64()
        ))
    }

    async fn deep_nesting(&self) -> CaseResult {
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        // 40 KB: under the 64 KiB body limit, so the parser, not the limit, answers.
        let deep = nested(20_000);
        let cases = [
            (
                format!("{}/pagos", self.gateway),
                format!(
                    r#"{{"id_afiliado":{deep},"monto":1,"moneda":"USD","referencia_pago":"n"}}"#
                ),
            ),
            (
                format!("{}/campaigns", self.gateway),
                format!(r#"{{"nombre":{deep}}}"#),
            ),
            (
                format!("{}/event-collector/events", self.gateway),
                format!(
                    r#"{{"tipo_evento":"CLICK","id_afiliado":"ABUSO","fuente_evento":"WEB_TAG","datos_custom":{{"a":{}}}}}"#,
                    nested(5_000)
                ),
            ),
        ];
        for (url, body) in cases {
            let answer = self.post_json(&url, body).await?;
            expect_problem(&url, answer.status().as_u16(), &[400], answer).await?;
        }
        Ok(
            "20 000 and 5 000 levels of arrays → 400 problem+json (pagos, campaigns, events)"
                .into(),
        )
    }

    async fn huge_numbers(&self) -> CaseResult {
        let payment = |monto: &str| {
            format!(
                r#"{{"id_afiliado":"ABUSO","monto":{monto},"moneda":"USD","referencia_pago":"abuso-{}"}}"#,
                uuid::Uuid::new_v4()
            )
        };
        let refused = [
            "1e400",
            "1e308",
            "123456789012345678901234567890123456789",
            "0.001",
            "-0",
            "1e-400",
            "-1",
            &"9".repeat(10_000),
        ];
        for monto in refused {
            let url = format!("{}/pagos", self.gateway);
            let answer = self.post_json(&url, payment(monto)).await?;
            let shown: String = monto.chars().take(24).collect();
            let body = expect_problem(
                &format!("monto {shown}"),
                answer.status().as_u16(),
                &[400],
                answer,
            )
            .await?;
            if !body.contains("monto") {
                return Err(format!(
                    "monto {shown}: the problem does not name the field: {body}"
                ));
            }
        }
        let campaign = serde_json::json!({
            "nombre": "abuso",
            "tipo": "ADQUISICION",
            "presupuesto": {"monto": 1e20, "moneda": "USD"},
            "fecha_inicio": "2026-01-01T00:00:00Z",
            "fecha_fin": "2099-01-01T00:00:00Z",
            "id_afiliado": "ABUSO",
        });
        let url = format!("{}/campaigns", self.gateway);
        let answer = self.post_json(&url, campaign.to_string()).await?;
        expect_problem("presupuesto 1e20", answer.status().as_u16(), &[400], answer).await?;
        Ok(format!(
            "{} odd amounts (1e400, 39 digits, 3 decimals, -0, 10 000 digits...) and a 1e20 budget → 400 naming the field",
            refused.len()
        ))
    }

    /// Strings the database must store and give back byte for byte, and the two it cannot
    /// (NUL, a lone surrogate), which must be refused naming the field.
    async fn unicode(&self) -> CaseResult {
        let affiliate = "AFILIADO-ñandú-日本-🚀-\u{202E}lrt-e\u{301}-\u{200B}";
        let reference = format!("ref-🧾-Ωμέγα-{}", uuid::Uuid::new_v4());
        let body = serde_json::json!({
            "id_afiliado": affiliate, "monto": 10.5, "moneda": "EUR", "referencia_pago": reference,
        });
        let created = self
            .post_json(&format!("{}/pagos", self.gateway), body.to_string())
            .await?;
        if created.status() != 200 {
            return Err(format!("a Unicode payment: {}", created.status()));
        }
        let created: serde_json::Value = created.json().await.map_err(|e| e.to_string())?;
        let id = created["id_pago"].as_str().ok_or("no id_pago")?;
        let read: serde_json::Value = self
            .get_json(&format!("{}/pagos/{id}", self.gateway))
            .await?;
        if read["id_afiliado"] != affiliate || read["referencia_pago"] != reference.as_str() {
            return Err(format!("read back differently: {read}"));
        }
        let name =
            "Campaña 🎯 \u{0627}\u{0644}\u{0639}\u{0631}\u{0628}\u{064A}\u{0629} ZA\u{0335}LGO";
        let campaign = serde_json::json!({
            "nombre": name, "tipo": "PROMOCIONAL",
            "presupuesto": {"monto": 100, "moneda": "USD"},
            "fecha_inicio": "2026-01-01T00:00:00Z", "fecha_fin": "2099-01-01T00:00:00Z",
            "id_afiliado": affiliate,
        });
        let answer = self
            .post_json(&format!("{}/campaigns", self.gateway), campaign.to_string())
            .await?;
        if answer.status() != 201 {
            return Err(format!("a Unicode campaign: {}", answer.status()));
        }
        let created: serde_json::Value = answer.json().await.map_err(|e| e.to_string())?;
        let read: serde_json::Value = self
            .get_json(&format!(
                "{}/campaigns/{}",
                self.gateway,
                created["id"].as_str().unwrap_or("-")
            ))
            .await?;
        if read["nombre"] != name {
            return Err(format!(
                "campaign name read back differently: {}",
                read["nombre"]
            ));
        }
        for (what, raw_body) in [
            (
                "NUL",
                r#"{"id_afiliado":"a\u0000b","monto":1,"moneda":"USD","referencia_pago":"nul"}"#,
            ),
            (
                "a lone surrogate",
                r#"{"id_afiliado":"a\ud800b","monto":1,"moneda":"USD","referencia_pago":"sur"}"#,
            ),
        ] {
            let url = format!("{}/pagos", self.gateway);
            let answer = self.post_json(&url, raw_body.to_owned()).await?;
            let body = expect_problem(what, answer.status().as_u16(), &[400], answer).await?;
            if !body.contains("id_afiliado") {
                return Err(format!(
                    "{what}: the problem does not name the field: {body}"
                ));
            }
        }
        Ok("emoji, RTL override, combining marks, zero-width space stored and read back exactly; NUL and a lone surrogate → 400 naming the field".into())
    }

    async fn sql_in_filters(&self) -> CaseResult {
        let injections = [
            "' OR '1'='1",
            "x'; DROP TABLE pagos; --",
            "1 UNION SELECT password FROM pg_shadow --",
            "%' OR 1=1 --",
            "\\'; SELECT pg_sleep(10); --",
        ];
        let campaigns_before = self.campaigns_total().await?;
        let mut answered = 0;
        for injection in injections {
            let queries: [(&str, &[&str]); 9] = [
                ("/pagos", &["id_afiliado"]),
                ("/pagos", &["estado"]),
                ("/pagos", &["limite"]),
                ("/campaigns", &["id_afiliado"]),
                ("/campaigns", &["estado"]),
                ("/campaigns/stats/general", &["id_afiliado"]),
                ("/api/reports/payments", &["id_afiliado", "moneda"]),
                ("/event-collector/statistics", &["id_afiliado"]),
                ("/event-collector/failed-events", &["id_afiliado"]),
            ];
            for (path, parameters) in queries {
                let query: Vec<(&str, &str)> = parameters.iter().map(|p| (*p, injection)).collect();
                let url =
                    reqwest::Url::parse_with_params(&format!("{}{path}", self.gateway), &query)
                        .map_err(|e| e.to_string())?;
                let started = Instant::now();
                let answer = self
                    .client
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| format!("{path}: {e}"))?;
                let status = answer.status().as_u16();
                let body = answer.text().await.unwrap_or_default();
                let what = format!("{path}?{}={injection:?}", parameters.join("&"));
                if !(status == 200 || status == 400) {
                    return Err(format!("{what}: {status} {body}"));
                }
                if started.elapsed() > Duration::from_secs(5) {
                    return Err(format!(
                        "{what}: took {:?} (pg_sleep ran?)",
                        started.elapsed()
                    ));
                }
                // An injected filter that matched everything would list other affiliates' rows.
                if status == 200
                    && (body.contains("\"id_pago\"") || body.contains("\"fecha_creacion\""))
                {
                    return Err(format!(
                        "{what}: the filter matched rows: {}",
                        &body[..body.len().min(300)]
                    ));
                }
                answered += 1;
            }
        }
        let campaigns_after = self.campaigns_total().await?;
        if campaigns_after != campaigns_before {
            return Err(format!(
                "campaigns went from {campaigns_before} to {campaigns_after}"
            ));
        }
        Ok(format!(
            "{answered} filter values with quotes, UNION, DROP, pg_sleep → 200 with no rows or 400; tables intact ({campaigns_after} campaigns)"
        ))
    }

    async fn campaigns_total(&self) -> Result<u64, String> {
        let list: serde_json::Value = self
            .get_json(&format!("{}/campaigns?limit=1", self.gateway))
            .await?;
        list["total"]
            .as_u64()
            .ok_or_else(|| format!("no total: {list}"))
    }

    async fn path_traversal(&self) -> CaseResult {
        let paths = [
            "/pagos/..%2F..%2F..%2Fetc%2Fpasswd",
            "/pagos/../../../etc/passwd",
            "/pagos/%2e%2e/%2e%2e/etc/passwd",
            "/pagos/....//....//etc/passwd",
            "/campaigns/..%2f..%2fmetrics",
            "/console/../../../../etc/passwd",
            "/console/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
            "/console/%2e%2e/%2e%2e/Cargo.toml",
            "/console/..\\..\\Cargo.toml",
            "/docs/../../../../etc/passwd",
            "/event-collector/events/..%2F..%2Fetc%2Fpasswd/status",
            "/event-collector/rate-limit/..%2F..%2F..%2Fetc%2Fpasswd",
            "/api/reports/..%2F..%2Fetc%2Fpasswd",
        ];
        let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
        for path in paths {
            let request =
                format!("GET {path} HTTP/1.1\r\nhost: abuse\r\nconnection: close\r\n\r\n");
            let answer = raw(
                self.gateway_address,
                request.as_bytes(),
                Duration::from_secs(10),
            )
            .await
            .map_err(|e| format!("{path}: {e}"))?;
            let status = status_of(&answer).ok_or_else(|| format!("{path}: no answer"))?;
            if status >= 500 {
                return Err(format!("{path}: {}", first_line(&answer)));
            }
            if answer.contains("root:")
                || answer.contains("[workspace]")
                || answer.contains("[package]")
            {
                return Err(format!("{path}: a file of the host was served"));
            }
            *statuses.entry(status).or_default() += 1;
        }
        let statuses: Vec<String> = statuses.iter().map(|(s, n)| format!("{n}×{s}")).collect();
        Ok(format!(
            "{} traversal paths (encoded, double-encoded, backslashes) → {}; no host file served",
            paths.len(),
            statuses.join(", ")
        ))
    }

    /// 400 connections at once from one client, then 300 held open idle while the same client
    /// sends 100 requests on others: every request answered, none with an error.
    async fn many_connections(&self) -> CaseResult {
        let address = self.gateway_address;
        let burst = (0..400).map(|_| async move {
            raw(
                address,
                b"GET /health HTTP/1.1\r\nhost: abuse\r\nconnection: close\r\n\r\n",
                Duration::from_secs(20),
            )
            .await
            .ok()
            .and_then(|a| status_of(&a))
        });
        let statuses = futures::future::join_all(burst).await;
        let ok = statuses.iter().filter(|s| **s == Some(200)).count();
        if ok != statuses.len() {
            let other: Vec<_> = statuses
                .iter()
                .filter(|s| **s != Some(200))
                .take(5)
                .collect();
            return Err(format!(
                "{ok} of {} concurrent connections answered 200; others: {other:?}",
                statuses.len()
            ));
        }
        let mut idle = Vec::new();
        for _ in 0..300 {
            idle.push(
                TcpStream::connect(address)
                    .await
                    .map_err(|e| format!("idle connection: {e}"))?,
            );
        }
        let requests = (0..100).map(|_| self.client.get(format!("{}/health", self.gateway)).send());
        let answers = futures::future::join_all(requests).await;
        let served = answers
            .iter()
            .filter(|a| a.as_ref().is_ok_and(|r| r.status() == 200))
            .count();
        drop(idle);
        if served != 100 {
            return Err(format!(
                "with 300 idle connections open, {served} of 100 requests answered 200"
            ));
        }
        Ok("400 concurrent connections all answered 200; with 300 idle ones held open, 100 requests all answered".into())
    }

    async fn still_ready(&self) -> CaseResult {
        for url in &self.services {
            let ready = self
                .client
                .get(format!("{url}/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !ready {
                return Err(format!("{url}/ready is not green after the abuse"));
            }
        }
        Ok(format!("all {} services /ready", self.services.len()))
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, String> {
        let answer = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        answer.json().await.map_err(|e| format!("{url}: {e}"))
    }

    async fn post_json(&self, url: &str, body: String) -> Result<reqwest::Response, String> {
        self.client
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))
    }
}

/// Checks an answer is one of `expected` with a problem+json body; returns the body.
async fn expect_problem(
    what: &str,
    status: u16,
    expected: &[u16],
    answer: reqwest::Response,
) -> Result<String, String> {
    let content_type = answer
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = answer.text().await.unwrap_or_default();
    if !expected.contains(&status) {
        return Err(format!(
            "{what}: {status} (expected {expected:?}) {}",
            &body[..body.len().min(300)]
        ));
    }
    if content_type != "application/problem+json" {
        return Err(format!(
            "{what}: {status} with content-type {content_type:?}"
        ));
    }
    Ok(body)
}

/// Writes `request` on a new connection and reads until the answer is complete, the server
/// closes, or `within` passes. Raw, because an HTTP client would normalise `..` in paths and
/// refuse to send oversized headers.
async fn raw(address: SocketAddr, request: &[u8], within: Duration) -> Result<String, String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    // The server may answer (431, 413) and close before the whole request is written.
    let _ = stream.write_all(request).await;
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) | Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
        let text = String::from_utf8_lossy(&received);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|length| received.len() >= end + 4 + length) {
                break;
            }
        }
    }
    if received.is_empty() {
        return Err("no answer".into());
    }
    Ok(String::from_utf8_lossy(&received).into_owned())
}

fn status_of(answer: &str) -> Option<u16> {
    answer.split_whitespace().nth(1)?.parse().ok()
}

fn first_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

/// An error with its causes: reqwest's own message says only "error sending request".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
