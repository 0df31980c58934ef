//! `causeflow keys …`: API keys on either host.

use std::io::Read;

use anyhow::Result;
use clap::Subcommand;

use super::stores::open_directory;
use super::Target;

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Create a key (and the tenant if new); prints the key and its webhook secret once.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: Target,
    },
    /// List a tenant's keys (never the keys or secrets themselves).
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: Target,
    },
    /// Revoke a key; requests with it are refused at once.
    Revoke {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        key: String,
        #[command(flatten)]
        store: Target,
    },
    /// Issue a new webhook secret; the old one keeps verifying until `retire-secret`.
    RotateSecret {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        key: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: Target,
    },
    /// Stop accepting the previous webhook secret of a rotated key.
    RetireSecret {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        key: String,
        #[command(flatten)]
        store: Target,
    },
    /// Store the documented development key of `events/` for tenant `demo` (local use only).
    CreateDev {
        #[command(flatten)]
        store: Target,
    },
    /// Register the Sentry integration's Client Secret (read from standard input when --secret is -).
    SetSentrySecret {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        key: String,
        #[arg(long)]
        secret: String,
        #[command(flatten)]
        store: Target,
    },
}

pub async fn keys(cmd: KeysCmd) -> Result<()> {
    match cmd {
        KeysCmd::Create {
            tenant,
            name,
            json,
            store,
        } => {
            let k = open_directory(&store)
                .await?
                .create_key(&tenant, &name)
                .await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"tenantId": tenant, "keyId": k.key_id, "apiKey": k.api_key, "webhookSecret": k.webhook_secret})
                );
            } else {
                println!(
                    "Created key {} for tenant {tenant}. Shown once:\n  API key:        {}\n  Webhook secret: {}",
                    k.key_id, k.api_key, k.webhook_secret
                );
            }
        }
        KeysCmd::List {
            tenant,
            json,
            store,
        } => {
            let keys = open_directory(&store).await?.list_keys(&tenant).await?;
            if json {
                println!("{}", serde_json::to_string(&keys)?);
            } else if keys.is_empty() {
                println!("No keys for tenant {tenant}.");
            } else {
                for k in keys {
                    let mut flags = Vec::new();
                    if k.revoked {
                        flags.push("revoked");
                    }
                    if k.rotating {
                        flags.push("rotating");
                    }
                    if k.has_sentry_secret {
                        flags.push("sentry-secret");
                    }
                    println!(
                        "{}\t{}\t{}\t{}",
                        k.key_id,
                        k.name,
                        k.created_at,
                        flags.join(",")
                    );
                }
            }
        }
        KeysCmd::Revoke { tenant, key, store } => {
            open_directory(&store)
                .await?
                .revoke_key(&tenant, &key)
                .await?;
            println!("Revoked {key}.");
        }
        KeysCmd::RotateSecret {
            tenant,
            key,
            json,
            store,
        } => {
            let secret = open_directory(&store)
                .await?
                .rotate_secret(&tenant, &key)
                .await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"tenantId": tenant, "keyId": key, "webhookSecret": secret})
                );
            } else {
                println!(
                    "New webhook secret for {key} (shown once): {secret}\nThe previous secret still verifies until `causeflow keys retire-secret`."
                );
            }
        }
        KeysCmd::RetireSecret { tenant, key, store } => {
            open_directory(&store)
                .await?
                .retire_secret(&tenant, &key)
                .await?;
            println!("Only the current webhook secret of {key} verifies now.");
        }
        KeysCmd::CreateDev { store } => {
            // The key is public: the SQLite file, or an AWS emulator on this machine, never a
            // deployed stack.
            #[cfg(feature = "aws")]
            if store.aws {
                causeflow_shared::aws::devstack::require_loopback(
                    "the development key (public, for local use only)",
                )?;
            }
            let k = causeflow_shared::auth::dev_key();
            open_directory(&store)
                .await?
                .store_key("demo", "development", &k)
                .await?;
            println!(
                "Stored the development key {} for tenant demo (local use only; never on a deployed stack).",
                k.key_id
            );
        }
        KeysCmd::SetSentrySecret {
            tenant,
            key,
            secret,
            store,
        } => {
            let secret = if secret == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                secret
            };
            open_directory(&store)
                .await?
                .set_sentry_secret(&tenant, &key, &secret)
                .await?;
            println!("Sentry-Hook-Signature is now verified for {key}.");
        }
    }
    Ok(())
}
