//! Trains a batch norm's gamma and beta on the GPU for a few steps and prints the loss going
//! down. The data: 4 channels whose normalized values should come out as `target_gamma * x_hat +
//! target_beta`; the loss is the mean squared error. Forward and backward run on the GPU; the
//! loss, its gradient dy and the SGD update are a few lines on the host.
//!
//! Run: `cargo run --release --example train_affine`

use wgpu_batchnorm::{BatchNorm, GpuContext, Layout, Result, Tensor};

const SHAPE: [usize; 4] = [16, 4, 8, 8];
const TARGET_GAMMA: [f32; 4] = [2.0, -1.0, 0.5, 3.0];
const TARGET_BETA: [f32; 4] = [0.5, 1.0, -2.0, 0.0];
const LEARNING_RATE: f32 = 0.5;

fn main() -> Result<()> {
    let ctx = GpuContext::new()?;
    println!("training on {}", ctx.adapter());
    let len: usize = SHAPE.iter().product();
    let spatial = SHAPE[2] * SHAPE[3];
    let mut layer = BatchNorm::new(&ctx, SHAPE[1])?;
    for step in 0..20 {
        // A fresh batch each step: channel c has mean c and spread c + 1.
        let x_data: Vec<f32> = (0..len)
            .map(|i| {
                let c = (i / spatial) % SHAPE[1];
                let wave = ((i * 7919 + step * 104_729) % 1000) as f32 / 500.0 - 1.0;
                c as f32 + (c as f32 + 1.0) * wave
            })
            .collect();
        let x = Tensor::from_slice(&ctx, &x_data, &SHAPE, Layout::ChannelsFirst)?;
        let out = layer.forward(&x)?;
        let y = out.y.to_vec()?;
        let (mean, invstd) = out.saved.read()?;
        // Target: the same normalization with the target affine parameters.
        let mut loss = 0.0f64;
        let dy: Vec<f32> = (0..len)
            .map(|i| {
                let c = (i / spatial) % SHAPE[1];
                let x_hat = (x_data[i] - mean[c]) * invstd[c];
                let diff = y[i] - (TARGET_GAMMA[c] * x_hat + TARGET_BETA[c]);
                loss += f64::from(diff * diff) / len as f64;
                2.0 * diff / len as f32
            })
            .collect();
        let dy = Tensor::from_slice(&ctx, &dy, &SHAPE, Layout::ChannelsFirst)?;
        let grads = layer.backward(&x, &dy, &out.saved)?;
        let (dgamma, dbeta) = grads
            .params
            .expect("the layer is affine, so it has parameter gradients")
            .read()?;
        let (gamma, beta) = layer.parameters()?;
        let step_down = |p: &[f32], g: &[f32]| -> Vec<f32> {
            p.iter()
                .zip(g)
                .map(|(p, g)| p - LEARNING_RATE * g)
                .collect()
        };
        layer.set_parameters(&step_down(&gamma, &dgamma), &step_down(&beta, &dbeta))?;
        println!("step {step:2}: loss {loss:.6}");
    }
    let (gamma, beta) = layer.parameters()?;
    println!("learned gamma {gamma:?} (target {TARGET_GAMMA:?})");
    println!("learned beta  {beta:?} (target {TARGET_BETA:?})");
    Ok(())
}
