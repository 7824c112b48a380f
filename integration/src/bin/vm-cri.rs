//! `vm-cri`: the CRI calls the VM harness makes inside the guest, which has neither crictl nor
//! python: the pulls a kubelet asks for, on containerd's socket.
//!
//!   vm-cri pull IMAGE        PullImage with no auth, as for a pod without a pull secret
//!   vm-cri runp NAME         RunPodSandbox on the host network (pulls the pause image)
//!   vm-cri inspecti IMAGE    ImageStatus: exit 0 when containerd has IMAGE, 1 when not
//!
//! `--address SOCK` (first) picks another socket than /run/containerd/containerd.sock.
//! A glibc binary: the guest is bookworm, as the machine that builds it (no musl target here).

use std::path::PathBuf;
use std::process::ExitCode;

use credgate_integration::cri::CriClient;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut socket = PathBuf::from("/run/containerd/containerd.sock");
    if args.first().map(String::as_str) == Some("--address") && args.len() >= 2 {
        socket = PathBuf::from(args.remove(1));
        args.remove(0);
    }
    let (Some(command), Some(operand), None) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: vm-cri [--address SOCK] pull|runp|inspecti ARG");
        return ExitCode::from(2);
    };
    let cri = CriClient::connect(&socket);
    match command.as_str() {
        "pull" => report(cri.pull_image(operand, None)),
        "runp" => match cri.run_pod_sandbox(operand) {
            Ok(id) => report::<String>(Ok(id)),
            // The pull is what is tested: the pause image pushed has no entrypoint to run.
            Err(status) => {
                eprintln!(
                    "vm-cri: RunPodSandbox: {}: {}",
                    status.code(),
                    status.message()
                );
                ExitCode::from(1)
            }
        },
        "inspecti" => match cri.image_status(operand) {
            Ok(Some(image)) => {
                println!("{} {}", image.id, image.repo_tags.join(","));
                ExitCode::SUCCESS
            }
            Ok(None) => {
                eprintln!("vm-cri: no image {operand}");
                ExitCode::from(1)
            }
            Err(status) => report::<String>(Err(status)),
        },
        other => {
            eprintln!("vm-cri: unknown command {other:?} (pull, runp, inspecti)");
            ExitCode::from(2)
        }
    }
}

fn report<T: std::fmt::Display>(outcome: Result<T, tonic::Status>) -> ExitCode {
    match outcome {
        Ok(value) => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Err(status) => {
            eprintln!("vm-cri: {}: {}", status.code(), status.message());
            ExitCode::from(1)
        }
    }
}
