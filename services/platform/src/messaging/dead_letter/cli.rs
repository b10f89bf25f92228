//! `aeropartners dlq list|replay`: what waits in the dead-letter topics, and sending it back.

use std::fmt::Write as _;

use super::{DLQ_SUFFIX, DeadLetter, Selection, list, replay};
use crate::{
    config::PulsarConfig,
    messaging::{Broker, MessagingError},
};

#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub pulsar: PulsarConfig,
    /// Pulsar's admin REST API, to find every dead-letter topic of the namespace. Without it,
    /// name the topics with `--topic`.
    #[arg(long, env = "PULSAR_ADMIN_URL", global = true)]
    pub pulsar_admin_url: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub action: DlqAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqAction {
    /// List the messages waiting in the dead-letter topics (they stay there).
    List {
        /// A topic whose dead letters to list (`payments.evt.completed`, or its `-DLQ`);
        /// repeatable. Default: every dead-letter topic the admin API knows.
        #[arg(long)]
        topic: Vec<String>,
    },
    /// Send dead letters back to their topic, for the subscription that failed them only.
    Replay {
        #[arg(long)]
        topic: Vec<String>,
        /// Only this message (`ledger:entry`, as `list` shows it); repeatable.
        #[arg(long = "message")]
        message_ids: Vec<String>,
        /// Only the message of this event id; repeatable.
        #[arg(long = "event")]
        event_ids: Vec<String>,
        /// Replay every dead letter of the topics (required when nothing else is selected).
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Broker(#[from] MessagingError),
    #[error("cannot list the namespace's topics through {url}: {source}")]
    Admin {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("name the topics with --topic, or set PULSAR_ADMIN_URL so every DLQ can be found")]
    NoTopics,
    #[error("say which dead letters to replay: --message, --event, or --all for every one")]
    NothingSelected,
}

/// Runs the command and returns what to print.
pub async fn run(args: DlqArgs) -> Result<String, DlqError> {
    let broker = Broker::connect(&args.pulsar).await?;
    let (topics, selection) = match &args.action {
        DlqAction::List { topic } => (topic, None),
        DlqAction::Replay {
            topic,
            message_ids,
            event_ids,
            all,
        } => {
            if message_ids.is_empty() && event_ids.is_empty() && !all {
                return Err(DlqError::NothingSelected);
            }
            let selection = Selection {
                message_ids: message_ids.clone(),
                event_ids: event_ids.clone(),
            };
            (topic, Some(selection))
        }
    };
    let dlqs = dead_letter_topics(&broker, &args, topics).await?;
    let output = match selection {
        None => {
            let mut letters = Vec::new();
            for dlq in &dlqs {
                letters.extend(list(&broker, dlq).await?);
            }
            if args.json {
                serde_json::to_string_pretty(&letters).unwrap_or_default()
            } else {
                let mut output = table(&letters);
                let _ = write!(
                    output,
                    "{} dead letters in {} topics",
                    letters.len(),
                    dlqs.len()
                );
                output
            }
        }
        Some(selection) => {
            let mut replayed = Vec::new();
            let mut left = 0;
            for dlq in &dlqs {
                let outcome = replay(&broker, dlq, &selection).await?;
                replayed.extend(outcome.replayed);
                left += outcome.left;
            }
            if args.json {
                serde_json::to_string_pretty(
                    &serde_json::json!({"replayed": replayed, "left": left}),
                )
                .unwrap_or_default()
            } else {
                let mut output = table(&replayed);
                let _ = write!(
                    output,
                    "{} replayed, {left} left in the dead-letter topics",
                    replayed.len()
                );
                output
            }
        }
    };
    Ok(output)
}

/// The full names of the dead-letter topics to work on.
async fn dead_letter_topics(
    broker: &Broker,
    args: &DlqArgs,
    named: &[String],
) -> Result<Vec<String>, DlqError> {
    if !named.is_empty() {
        return Ok(named
            .iter()
            .map(|topic| {
                let full = if topic.contains("://") {
                    topic.clone()
                } else {
                    broker.topic(topic)
                };
                if full.ends_with(DLQ_SUFFIX) {
                    full
                } else {
                    format!("{full}{DLQ_SUFFIX}")
                }
            })
            .collect());
    }
    let Some(admin) = &args.pulsar_admin_url else {
        return Err(DlqError::NoTopics);
    };
    let url = format!(
        "{}/admin/v2/persistent/{}",
        admin.trim_end_matches('/'),
        args.pulsar.pulsar_namespace
    );
    let admin_error = |source| DlqError::Admin {
        url: url.clone(),
        source,
    };
    let topics: Vec<String> = reqwest::get(&url)
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(admin_error)?
        .json()
        .await
        .map_err(admin_error)?;
    let ours = broker.topic("");
    let mut dlqs: Vec<String> = topics
        .into_iter()
        .filter(|t| t.starts_with(&ours) && t.ends_with(DLQ_SUFFIX))
        .collect();
    dlqs.sort();
    Ok(dlqs)
}

fn table(letters: &[DeadLetter]) -> String {
    let mut out = String::new();
    for letter in letters {
        let _ = writeln!(
            out,
            "{}  {}  {}  {}  subscription={}  deliveries={}  at={}\n    {}",
            letter.origin_topic,
            letter.message_id,
            letter.event_type.as_deref().unwrap_or("-"),
            letter.event_id.as_deref().unwrap_or("-"),
            letter.subscription,
            letter.deliveries,
            letter.dead_lettered_at,
            letter.reason,
        );
    }
    out
}
