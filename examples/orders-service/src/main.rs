//! Runs the example orders service.
//!
//! ```text
//! TESSERA_ISSUER=http://127.0.0.1:8080 TESSERA_AUDIENCE=https://orders.example \
//! TESSERA_CLIENT_ID=orders-service TESSERA_CLIENT_SECRET=tsc_... \
//! cargo run -p tessera-example-orders -- 127.0.0.1:3000 examples/orders-service/policy.toml
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use tessera_guard::{Guard, GuardConfig, Policy};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            #[allow(clippy::print_stderr, reason = "a command-line program reports its one-line error")]
            {
                eprintln!("orders-service: {message}");
            }
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<(), String> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is required"));
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:3000".into());
    let policy = PathBuf::from(args.next().unwrap_or_else(|| "examples/orders-service/policy.toml".into()));
    let policy = Policy::load(&policy).map_err(|e| e.to_string())?;
    let config = GuardConfig::new(
        var("TESSERA_ISSUER")?,
        var("TESSERA_AUDIENCE")?,
        var("TESSERA_CLIENT_ID")?,
        var("TESSERA_CLIENT_SECRET")?,
    );
    let guard = Guard::start(config, policy).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let app =
        tessera_example_orders::app(&guard).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).await.map_err(|e| format!("server failed: {e}"))
}
