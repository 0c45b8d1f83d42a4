//! The `rampart` command: serve (the default), apply migrations, or create a merchant.

use clap::Parser;
use rampart::cli::{Cli, Command, MerchantCommand};
use rampart::domain::merchant::NewMerchant;
use rampart::settings::Settings;
use rampart::startup::{Application, Backend};
use rampart::store::merchants;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rampart: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = rampart::telemetry::init(&settings.log, &settings.telemetry);
    let result = actix_web::rt::System::new().block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(settings).await,
            Command::Migrate => migrate(settings).await,
            Command::Merchant(MerchantCommand::Create { name, webhook_url }) => {
                create_merchant(settings, name, webhook_url).await
            }
        }
    });
    // Outside the runtime: the exporter's last batch is sent on the SDK's own thread.
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rampart: {e}");
            ExitCode::FAILURE
        }
    }
}

type AnyError = Box<dyn std::error::Error>;

async fn serve(settings: Settings) -> Result<(), AnyError> {
    let host = settings.server.host.clone();
    let app = Application::build(settings).await?;
    let base = format!("http://{host}:{}", app.port());
    println!("Rampart is serving on {base}");
    println!(
        "  health:   {base}/health  ·  ready: {base}/health/ready  ·  metrics: {base}/metrics"
    );
    println!("  OpenAPI:  {base}/api-docs/openapi.json");
    if let Some(key) = app.demo_api_key() {
        println!("  demo merchant API key: {key}");
        println!("  try: curl -H 'Authorization: Bearer {key}' {base}/api/v1/products");
    }
    actix_web::rt::spawn(stop_on_signal(app.handle()));
    app.run_until_stopped().await?;
    Ok(())
}

/// SIGTERM stops the HTTP server gracefully, SIGINT (Ctrl-C) at once; either way
/// `run_until_stopped` then stops the actors in order, the jobs' drain and hand-back included.
/// (actix-server's own handling stopped the whole System 300 ms after the HTTP server: the jobs
/// dispatcher was cut off in its drain, its mails in flight unrecorded and the jobs it held left
/// to their leases, so a graceful restart sent mails again.)
async fn stop_on_signal(server: actix_web::dev::ServerHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("rampart: cannot listen for SIGTERM/SIGINT");
        return;
    };
    let graceful = tokio::select! {
        _ = term.recv() => true,
        _ = int.recv() => false,
    };
    tracing::info!(
        graceful,
        "stop signal received: stopping the HTTP server, then the actors"
    );
    server.stop(graceful).await;
}

async fn migrate(settings: Settings) -> Result<(), AnyError> {
    let backend = Backend::start(&settings, false).await?;
    backend.shutdown().await;
    println!("migrations are up to date");
    Ok(())
}

async fn create_merchant(
    settings: Settings,
    name: String,
    webhook_url: Option<String>,
) -> Result<(), AnyError> {
    let allow = settings.webhooks.allow_private_targets;
    let input = NewMerchant::parse(&name, webhook_url.as_deref(), allow)?;
    input.check_resolved(allow).await?;
    let backend = Backend::start(&settings, false).await?;
    let created = merchants::create(&backend.db, input).await;
    backend.shutdown().await;
    println!("{}", serde_json::to_string_pretty(&created?)?);
    Ok(())
}
