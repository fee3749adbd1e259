// The benchmark's roofline: read one vec4, write one vec4, grid-stride. Its bandwidth on an
// adapter is what a memory-bound batch norm can at best reach there.

@group(0) @binding(0) var<storage, read> source: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> destination: array<vec4<f32>>;

@compute @workgroup_size(256)
fn stream(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let n = arrayLength(&source);
    for (var i = gid.x; i < n; i += nwg.x * 256u) {
        destination[i] = source[i] * 1.5 + vec4<f32>(0.25);
    }
}
