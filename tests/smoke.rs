mod common;
use common::*;
use wgpu_batchnorm::{reference, BatchNorm, Layout};

#[test]
fn smoke() {
    for (shape, layout) in [
        (vec![3usize, 4, 5, 6], Layout::ChannelsFirst),
        (vec![3, 5, 6, 4], Layout::ChannelsLast),
        (vec![37, 5], Layout::ChannelsFirst),
    ] {
        let len: usize = shape.iter().product();
        let data = normal_data(len, 1, 3.0, 2.0);
        let (x, host) = upload(&data, &shape, layout);
        let mut bn = BatchNorm::new(
            &context(),
            *shape
                .get(if layout == Layout::ChannelsFirst {
                    1
                } else {
                    shape.len() - 1
                })
                .unwrap(),
        )
        .unwrap();
        let y = poisoned(&shape, layout);
        let saved = bn.forward_into(&x, &y).unwrap();
        let (want, stats) =
            reference::training_forward::<f32, f32>(host.view(), layout, None, None, 1e-5);
        assert_close("y", &y.to_vec().unwrap(), &flat(want.view()), 1e-5, 0.0);
        let (m, inv) = saved.read().unwrap();
        assert_close("mean", &m, &stats.mean, 1e-6, 1e-6);
        assert_close("invstd", &inv, &stats.invstd, 0.0, 1e-5);
    }
}
