//! One tokio runtime thread serves many client processes: each client connects to a
//! `Listener` and sends requests; the server runs one task per client, which awaits
//! `recv_async` on the client's port and answers with `post_message_async`. No thread
//! per client, no helper thread: the ports' readiness descriptors sit in tokio's
//! reactor. The clients are this program re-run with `client PATH ID` (they use tokio
//! too).
//!
//! ```text
//! cargo run --release --features tokio --example tokio_server -- [clients] [requests]
//! ```

use std::time::Instant;

use shmport::{Listener, MessagePort, Value};

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// A client: `requests` numbers to square, each awaited before the next.
fn client(path: &str, id: u32, requests: u32) -> Result<(), Box<dyn std::error::Error>> {
    let port = MessagePort::connect(path)?;
    runtime()?.block_on(async {
        for n in 0..requests {
            let x = f64::from(id * 1000 + n);
            port.post_message_async(x, []).await?;
            let answer = port.recv_async().await?;
            if answer.data != Value::Number(x * x) {
                return Err(format!("client {id}: {x}² came back as {:?}", answer.data).into());
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    port.close();
    Ok(())
}

/// The server's task for one client: answers until the client closes its port.
async fn serve(port: MessagePort) -> u32 {
    let mut served = 0;
    while let Ok(request) = port.recv_async().await {
        let Value::Number(x) = request.data else { continue };
        if port.post_message_async(x * x, []).await.is_err() {
            break;
        }
        served += 1;
    }
    served
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("client") {
        let id = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(0);
        let requests = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(100);
        return client(&args[2], id, requests);
    }
    let clients: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let requests: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let path = format!("shmport-tokio-server-{}", std::process::id());
    let listener = Listener::bind(&path)?;

    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for id in 0..clients {
        children.push(
            std::process::Command::new(&exe).args(["client", &path, &id.to_string(), &requests.to_string()]).spawn()?,
        );
    }

    let start = Instant::now();
    let served = runtime()?.block_on(async move {
        let mut tasks = tokio::task::JoinSet::new();
        // `accept` blocks: it runs on tokio's blocking pool, one connection at a time,
        // while this thread serves the clients already connected.
        let listener = std::sync::Arc::new(listener);
        for _ in 0..clients {
            let l = listener.clone();
            let port = tokio::task::spawn_blocking(move || l.accept()).await??;
            tasks.spawn(serve(port));
        }
        let mut served = 0;
        while let Some(n) = tasks.join_next().await {
            served += n?;
        }
        Ok::<_, Box<dyn std::error::Error>>(served)
    })?;
    let elapsed = start.elapsed();
    let mut failed = 0;
    for mut child in children {
        if !child.wait()?.success() {
            failed += 1;
        }
    }
    println!(
        "served {clients} client processes, {served} requests, from one tokio runtime thread in {:.1} ms",
        elapsed.as_secs_f64() * 1e3
    );
    if failed > 0 || served != clients * requests {
        return Err(format!("{failed} clients failed; {served} of {} requests served", clients * requests).into());
    }
    Ok(())
}
