//! The `ota-server` command: serve, print the default config, manage tenants.

use clap::{Parser, Subcommand};
use ota_server::config::{Config, Flags, DEFAULT_TOML};
use ota_server::domain::DisplayName;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ota-server",
    version,
    about = "Self-hosted OTA firmware update server"
)]
struct Cli {
    /// Configuration file (default: ./ota.toml when it exists).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory (SQLite database, firmware files).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, global = true)]
    bind: Option<String>,
    /// Port to listen on (0 picks a free one).
    #[arg(long, global = true)]
    port: Option<u16>,
    /// Database URL (sqlite:... or postgres://...).
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Port of the embedded MQTT broker (0 picks a free one).
    #[arg(long, global = true)]
    mqtt_port: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// `manual`: run on a clock that moves only through `POST /v1/clock/advance`
        /// (tests and evaluations; never in production).
        #[arg(long, value_parser = ["system", "manual"], default_value = "system")]
        clock: String,
    },
    /// Show configuration.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        what: TenantCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a commented configuration file holding the defaults.
    PrintDefault,
    /// Print the configuration in force, secrets redacted.
    Show,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and print its first admin API key (shown once).
    Create { name: String },
    /// List tenants.
    List,
}

fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cfg.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Config {
        what: ConfigCommand::PrintDefault,
    } = cli.command
    {
        print!("{DEFAULT_TOML}");
        return ExitCode::SUCCESS;
    }
    let flags = Flags {
        data_dir: cli.data_dir,
        bind: cli.bind,
        port: cli.port,
        database_url: cli.database_url,
        mqtt_port: cli.mqtt_port,
    };
    let config = match Config::load(cli.config.as_deref(), &flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ota-server: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);
    match run(cli.command, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ota-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Serve { clock } => {
            let clock = if clock == "manual" {
                ota_server::app::ClockChoice::Manual
            } else {
                ota_server::app::ClockChoice::System
            };
            ota_server::app::serve(config, clock).await?
        }
        Command::Config { what } => match what {
            ConfigCommand::PrintDefault => print!("{DEFAULT_TOML}"),
            ConfigCommand::Show => print!("{}", toml::to_string(&config.redacted())?),
        },
        Command::Tenant { what } => {
            let store = ota_server::app::open_store(&config).await?;
            let now = chrono::Utc::now().timestamp_millis();
            match what {
                TenantCommand::Create { name } => {
                    let name = DisplayName::parse_trimmed("name", &name)?;
                    let (tenant, key) = store.create_tenant(&name, now).await?;
                    eprintln!(
                        "created tenant {} ({}); its admin API key is printed below, once:",
                        tenant.id, tenant.name
                    );
                    println!("{}", key.secret);
                }
                TenantCommand::List => {
                    for t in store.list_tenants().await? {
                        println!("{}\t{}", t.id, t.name);
                    }
                }
            }
        }
    }
    Ok(())
}
