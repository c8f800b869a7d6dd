//! `skyloom-testbed`: start local Kubernetes clusters, inspect them and break them on purpose.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use skyloom_testbed::control::{self, Request, StatusReport};
use skyloom_testbed::{Testbed, TestbedSpec};
use tokio::sync::Notify;

/// Local Kubernetes clusters on loopback for Skyloom: a hub and members ("clouds") with fake
/// GPU nodes, each apiserver behind a proxy that can cut it off.
#[derive(Debug, Parser)]
#[command(name = "skyloom-testbed", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
struct NameArg {
    /// Name of the testbed to talk to.
    #[arg(long, env = "SKYLOOM_TESTBED_NAME", default_value = "skyloom")]
    name: String,
}

#[derive(Debug, clap::Args)]
struct MemberArg {
    /// The member (cluster) name, e.g. aws-us-east-1.
    member: String,
    #[command(flatten)]
    name: NameArg,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a testbed and keep it up until Ctrl-C (or `down` with --detach).
    Up {
        /// Testbed description (YAML); without it, a hub and three GPU members.
        #[arg(short = 'f', long)]
        file: Option<PathBuf>,
        /// Overrides the name in the file.
        #[arg(long)]
        name: Option<String>,
        /// Return once every member is ready and leave the testbed running in the background.
        #[arg(long)]
        detach: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: Output,
        /// Internal: run as the detached supervisor.
        #[arg(long, hide = true)]
        supervise: bool,
    },
    /// Describe a running testbed.
    Status {
        #[command(flatten)]
        name: NameArg,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Print the path of a member's kubeconfig.
    Kubeconfig(MemberArg),
    /// Partition a member: its apiserver stops answering outside callers; its Pods keep running.
    Cut(MemberArg),
    /// End a partition.
    Restore(MemberArg),
    /// Add latency to a member's apiserver traffic (0 removes it).
    Latency {
        #[command(flatten)]
        member: MemberArg,
        /// Milliseconds added per chunk in each direction.
        ms: u64,
    },
    /// Freeze a member's apiserver (SIGSTOP).
    Pause(MemberArg),
    /// Thaw a frozen apiserver (SIGCONT).
    Resume(MemberArg),
    /// Kill a member's apiserver (SIGKILL).
    Kill(MemberArg),
    /// Start a killed apiserver again.
    Restart(MemberArg),
    /// Stop a detached testbed.
    Down(NameArg),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kube_client=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up {
            file,
            name,
            detach,
            output,
            supervise,
        } => {
            let mut spec = match &file {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    TestbedSpec::from_yaml(&text)
                        .with_context(|| format!("in {}", path.display()))?
                }
                None => TestbedSpec::default_spec(),
            };
            if let Some(n) = name {
                spec.name = n;
            }
            if !skyloom_testbed::spec::is_dns_label(&spec.name) {
                bail!("testbed name '{}' must be a DNS label", spec.name);
            }
            if detach && !supervise {
                return detach_up(file.as_deref(), &spec.name, output).await;
            }
            up(spec, output, supervise).await
        }
        Command::Status { name, output } => {
            let status = call(&name.name, Request::Status).await?;
            print_status(&status, output);
            Ok(ExitCode::SUCCESS)
        }
        Command::Kubeconfig(m) => {
            let status = call(&m.name.name, Request::Status).await?;
            let member = status
                .members
                .iter()
                .find(|x| x.name == m.member)
                .with_context(|| format!("no member named '{}'", m.member))?;
            println!("{}", member.kubeconfig.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Cut(m) => fault(m, |member| Request::Cut { member }, "cut off").await,
        Command::Restore(m) => fault(m, |member| Request::Restore { member }, "restored").await,
        Command::Latency { member, ms } => {
            fault(
                member,
                |member| Request::Latency { member, ms },
                "latency set",
            )
            .await
        }
        Command::Pause(m) => fault(m, |member| Request::Pause { member }, "paused").await,
        Command::Resume(m) => fault(m, |member| Request::Resume { member }, "resumed").await,
        Command::Kill(m) => fault(m, |member| Request::Kill { member }, "apiserver killed").await,
        Command::Restart(m) => {
            fault(
                m,
                |member| Request::Restart { member },
                "apiserver restarted",
            )
            .await
        }
        Command::Down(name) => {
            call(&name.name, Request::Down).await?;
            let socket = control::socket_path(&name.name);
            let deadline = Instant::now() + Duration::from_secs(60);
            while socket.exists() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // The supervisor removes the socket after the testbed has been torn down.
            println!("testbed '{}' stopped", name.name);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn call(name: &str, req: Request) -> anyhow::Result<StatusReport> {
    let resp = control::request(&control::socket_path(name), &req).await?;
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_else(|| "unknown error".into()));
    }
    resp.status.context("the supervisor sent no status")
}

async fn fault(
    m: MemberArg,
    make: impl FnOnce(String) -> Request,
    done: &str,
) -> anyhow::Result<ExitCode> {
    call(&m.name.name, make(m.member.clone())).await?;
    println!("{}: {done}", m.member);
    Ok(ExitCode::SUCCESS)
}

fn print_status(status: &StatusReport, output: Output) {
    match output {
        Output::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(status).unwrap_or_default()
            );
        }
        Output::Text => {
            println!(
                "testbed '{}' (work dir {})",
                status.name,
                status.work_dir.display()
            );
            println!(
                "{:<20} {:<7} {:<6} {:<28} KUBECONFIG",
                "NAME", "ROLE", "NODES", "STATE"
            );
            for m in &status.members {
                let mut state = Vec::new();
                if !m.apiserver_running {
                    state.push("killed".to_owned());
                } else if m.paused {
                    state.push("paused".to_owned());
                }
                if m.fault.cut {
                    state.push("cut".to_owned());
                }
                if m.fault.latency_ms > 0 {
                    state.push(format!("latency={}ms", m.fault.latency_ms));
                }
                let state = if state.is_empty() {
                    "ok".to_owned()
                } else {
                    state.join(",")
                };
                let role = format!("{:?}", m.role).to_lowercase();
                println!(
                    "{:<20} {:<7} {:<6} {:<28} {}",
                    m.name,
                    role,
                    m.nodes,
                    state,
                    m.kubeconfig.display()
                );
            }
        }
    }
}

async fn up(spec: TestbedSpec, output: Output, supervise: bool) -> anyhow::Result<ExitCode> {
    let name = spec.name.clone();
    let state = control::state_dir(&name);
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    let socket = control::socket_path(&name);
    if socket.exists() && control::request(&socket, &Request::Status).await.is_ok() {
        bail!(
            "a testbed named '{name}' is already running; stop it with `skyloom-testbed down --name {name}` or pick another --name"
        );
    }
    if !supervise {
        eprintln!(
            "starting testbed '{name}' ({} members{})...",
            spec.members.len(),
            if spec.hub { " and a hub" } else { "" }
        );
    }
    let started = Instant::now();
    let testbed = match Testbed::start(spec).await {
        Ok(t) => Arc::new(t),
        Err(e) => {
            if supervise {
                let _ = std::fs::write(state.join("failed.txt"), format!("{e}"));
            }
            return Err(e.into());
        }
    };
    let status = control::status_of(&testbed);
    let stop = Arc::new(Notify::new());
    let server = tokio::spawn({
        let testbed = testbed.clone();
        let stop = stop.clone();
        let socket = socket.clone();
        async move { control::serve(testbed, &socket, stop).await }
    });
    if supervise {
        let text = serde_json::to_string(&status)?;
        std::fs::write(state.join("ready.json"), text).context("writing ready.json")?;
    } else {
        eprintln!("ready in {:.1}s", started.elapsed().as_secs_f64());
        print_status(&status, output);
        if matches!(output, Output::Text) {
            println!();
            println!(
                "Try:   kubectl --kubeconfig {} get nodes",
                status
                    .members
                    .last()
                    .map(|m| m.kubeconfig.display().to_string())
                    .unwrap_or_default()
            );
            println!(
                "Break: skyloom-testbed cut|restore|pause|resume|kill|restart <member>, latency <member> <ms>"
            );
            println!("Ctrl-C stops the testbed.");
        }
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut server = server;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => { stop.notify_one(); }
        _ = sigterm.recv() => { stop.notify_one(); }
        res = &mut server => {
            if let Ok(Err(e)) = res { eprintln!("control socket: {e}"); }
        }
    }
    if !server.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    if !supervise {
        eprintln!("stopping testbed '{name}'...");
    }
    // Dropping the last reference kills every process and removes the work directory.
    drop(testbed);
    // A clean stop leaves nothing behind; a failed start keeps failed.txt and the log.
    let _ = std::fs::remove_dir_all(&state);
    Ok(ExitCode::SUCCESS)
}

async fn detach_up(file: Option<&Path>, name: &str, output: Output) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let state = control::state_dir(name);
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    let socket = control::socket_path(name);
    if socket.exists() && control::request(&socket, &Request::Status).await.is_ok() {
        bail!(
            "a testbed named '{name}' is already running; stop it with `skyloom-testbed down --name {name}`"
        );
    }
    let ready = state.join("ready.json");
    let failed = state.join("failed.txt");
    let _ = std::fs::remove_file(&ready);
    let _ = std::fs::remove_file(&failed);
    let log_path = state.join("supervisor.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let exe = std::env::current_exe().context("finding my own executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("up").arg("--supervise").arg("--name").arg(name);
    if let Some(f) = file {
        cmd.arg("-f")
            .arg(std::path::absolute(f).unwrap_or_else(|_| f.to_owned()));
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log handle")?)
        .stderr(log)
        .process_group(0);
    let mut child = cmd.spawn().context("starting the testbed supervisor")?;
    eprintln!(
        "starting testbed '{name}' in the background (log: {})...",
        log_path.display()
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let status: StatusReport = serde_json::from_str(&text).context("reading ready.json")?;
            print_status(&status, output);
            return Ok(ExitCode::SUCCESS);
        }
        if let Ok(text) = std::fs::read_to_string(&failed) {
            bail!("the testbed failed to start: {text}");
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "the supervisor exited ({status}); see {}",
                log_path.display()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the testbed was not ready within 600 s; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
