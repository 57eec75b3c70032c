//! `saescope doctor`: is this machine ready? libtorch, devices, and the bundled assets.

use anyhow::{Result, bail};
use saescope_activations::assets::{self, ASSETS, Status};
use tch::{Device, Kind, Tensor};

#[derive(clap::Args)]
pub struct Args {
    /// Fail unless CUDA is usable (for checking a GPU build on a GPU machine).
    #[arg(long)]
    require_cuda: bool,
}

/// A 3x3 matrix product whose answer is known in closed form, on the given device.
fn tiny_matmul(device: Device) -> Result<()> {
    let a = Tensor::arange(9, (Kind::Float, device)).view([3, 3]);
    let id = Tensor::eye(3, (Kind::Float, device));
    let got: Vec<f32> = Vec::try_from(
        a.matmul(&id)
            .sum(Kind::Float)
            .to_device(Device::Cpu)
            .view([-1]),
    )?;
    if got != [36.0] {
        bail!("3x3 matmul on {device:?} gave {got:?}, expected [36.0]");
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    println!("saescope {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch threads: {}", tch::get_num_threads());
    tiny_matmul(Device::Cpu)?;
    println!("cpu: ok (3x3 matmul)");
    let cuda = tch::Cuda::is_available();
    if cuda {
        let n = tch::Cuda::device_count();
        for i in 0..n as usize {
            tiny_matmul(Device::Cuda(i))?;
            println!(
                "cuda:{i}: ok (3x3 matmul), cudnn {}",
                tch::Cuda::cudnn_is_available()
            );
        }
    } else {
        println!("cuda: not available (CPU build, or no GPU)");
        if args.require_cuda {
            bail!(
                "CUDA is not available: build with SAESCOPE_CUDA=1 and run on a machine with a GPU"
            );
        }
    }
    let cache = assets::cache_dir();
    println!("cache: {}", cache.display());
    for a in ASSETS {
        let state = match a.status(&cache, false) {
            Status::Installed => "installed".to_owned(),
            Status::Missing => "missing (run `saescope setup`)".to_owned(),
            Status::Damaged(why) => format!("damaged: {why}"),
        };
        println!("  {:<24} {state}", a.name);
    }
    Ok(())
}
