//! `GpuContext::set_shader_directory`: kernels read from a directory instead of the crate's own
//! (the tool `bnbench --compare-shaders` is built on). A copy of `shaders/` gives the same
//! bits; the files really come from the directory (a broken one fails the call that needs it
//! and is named, a missing one too); the directory is refused once a context has built kernels; a
//! refused or failed call changes nothing.

mod common;

use std::path::Path;

use common::normal_data;
use tempfile::TempDir;
use wgpu_batchnorm::{BatchNorm, BatchNormError, GpuContext, Layout, Tensor};

const SHAPES: [(&[usize], Layout); 3] = [
    (&[4, 12, 9, 9], Layout::ChannelsFirst),
    (&[6, 5, 5, 16], Layout::ChannelsLast),
    (&[300, 40], Layout::ChannelsFirst),
];

/// The crate's `shaders/`, copied into a temporary directory (removed when dropped, a failing
/// test too).
fn copy_of_shaders() -> TempDir {
    let dir = empty_dir();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for entry in std::fs::read_dir(source).expect("read shaders/") {
        let path = entry.expect("a directory entry").path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).expect("copy a shader");
    }
    dir
}

/// An empty temporary directory, removed when dropped.
fn empty_dir() -> TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

fn fresh_context() -> GpuContext {
    GpuContext::new().expect("a wgpu adapter (bash .ci/install-gpu-drivers.sh)")
}

/// Training forward and backward of a fixed input; every output as bits.
fn results(ctx: &GpuContext, shape: &[usize], layout: Layout) -> Result<Vec<u32>, BatchNormError> {
    let len = shape.iter().product();
    let x = Tensor::from_slice(ctx, &normal_data(len, 3, 2.0, 1.5), shape, layout)?;
    let dy = Tensor::from_slice(ctx, &normal_data(len, 4, 0.0, 1.0), shape, layout)?;
    let channels = match layout {
        Layout::ChannelsFirst => shape[1],
        Layout::ChannelsLast => shape[shape.len() - 1],
    };
    let mut layer = BatchNorm::new(ctx, channels)?;
    let out = layer.forward(&x)?;
    let grads = layer.backward(&x, &dy, &out.saved)?;
    let (mean, invstd) = out.saved.read()?;
    let (dgamma, dbeta) = grads.params.expect("an affine layer").read()?;
    let (running_mean, running_var) = layer.running_statistics()?;
    let values = [
        out.y.to_vec()?,
        grads.dx.to_vec()?,
        mean,
        invstd,
        dgamma,
        dbeta,
        running_mean,
        running_var,
    ];
    Ok(values.concat().into_iter().map(f32::to_bits).collect())
}

#[test]
fn a_copy_of_the_shaders_gives_the_same_bits() {
    let dir = copy_of_shaders();
    let (builtin, copied) = (fresh_context(), fresh_context());
    copied
        .set_shader_directory(dir.path())
        .expect("a fresh context takes a directory");
    for (shape, layout) in SHAPES {
        let expected = results(&builtin, shape, layout).expect("built-in kernels");
        let actual = results(&copied, shape, layout).expect("the copied kernels");
        assert!(
            expected == actual,
            "{shape:?} {layout:?}: the copy of shaders/ gave other bits"
        );
    }
}

#[test]
fn kernels_come_from_the_directory() {
    let dir = copy_of_shaders();
    let common_wgsl = dir.path().join("common.wgsl");
    let mut text = std::fs::read_to_string(&common_wgsl).unwrap();
    text.push_str("\nthis line is not WGSL\n");
    std::fs::write(&common_wgsl, text).unwrap();
    let ctx = fresh_context();
    ctx.set_shader_directory(dir.path()).unwrap();
    let (shape, layout) = SHAPES[0];
    let x = Tensor::from_slice(&ctx, &normal_data(3888, 5, 0.0, 1.0), shape, layout).unwrap();
    let y = Tensor::from_slice(&ctx, &vec![7.25; 3888], shape, layout).unwrap();
    let mut layer = BatchNorm::new(&ctx, 12).unwrap();
    let error = layer
        .forward_into(&x, &y)
        .expect_err("a kernel that does not compile");
    match &error {
        BatchNormError::ShaderDirectory { directory, problem } => {
            assert_eq!(directory, dir.path());
            assert!(problem.contains("common.wgsl"), "{problem}");
            assert!(problem.contains("do not compile"), "{problem}");
        }
        other => panic!("expected ShaderDirectory, got {other:?}"),
    }
    assert!(
        y.to_vec().unwrap().iter().all(|&v| v == 7.25),
        "y was written"
    );
    assert_eq!(layer.num_batches_tracked(), 0);
    let (running_mean, running_var) = layer.running_statistics().unwrap();
    assert!(running_mean.iter().all(|&m| m == 0.0) && running_var.iter().all(|&v| v == 1.0));
}

#[test]
fn a_missing_file_is_named() {
    let dir = empty_dir();
    let ctx = fresh_context();
    ctx.set_shader_directory(dir.path()).unwrap();
    let (shape, layout) = SHAPES[1];
    let error = results(&ctx, shape, layout).expect_err("no kernels to read");
    match &error {
        BatchNormError::ShaderDirectory { directory, problem } => {
            assert_eq!(directory, dir.path());
            assert!(problem.contains(".wgsl"), "{problem}");
        }
        other => panic!("expected ShaderDirectory, got {other:?}"),
    }
    assert!(
        error
            .to_string()
            .contains(&dir.path().display().to_string()),
        "{error}"
    );
}

#[test]
fn a_context_that_built_kernels_refuses_a_directory_and_keeps_its_own() {
    let ctx = fresh_context();
    let (shape, layout) = SHAPES[2];
    let before = results(&ctx, shape, layout).unwrap();
    let dir = empty_dir();
    let error = ctx
        .set_shader_directory(dir.path())
        .expect_err("kernels were built");
    assert!(
        matches!(&error, BatchNormError::ShaderDirectory { problem, .. } if problem.contains("new context")),
        "{error:?}"
    );
    // The refused directory (empty) is not used: the context still runs, to the same bits,
    // and builds the kernels of another shape (none of them read from the directory).
    assert_eq!(results(&ctx, shape, layout).unwrap(), before);
    let (other_shape, other_layout) = SHAPES[1];
    assert_eq!(
        results(&ctx, other_shape, other_layout).unwrap(),
        results(&fresh_context(), other_shape, other_layout).unwrap()
    );
}
