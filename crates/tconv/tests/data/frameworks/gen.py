"""Goldens for tconv's TensorFlow / Keras / JAX conventions (`tconv::convention`).

Each case is a folder with x.npy, w.npy (the framework's layouts), optional b.npy, the
framework's output y.npy, and, for the gradient cases, gy.npy with the framework's
gx.npy / gw.npy; case.json holds the call's arguments. Regenerate (needs tensorflow-cpu and
jax from PyPI; float32 throughout):
    python gen.py            # from this folder
"""
import json
import os
import shutil

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(20261207)


def arr(*shape):
    # Small integers over 4: exact in float32 sums of these sizes.
    return (rng.integers(-8, 9, size=shape) / 4).astype(np.float32)


def save(name, meta, arrays):
    d = os.path.join(HERE, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for k, v in arrays.items():
        np.save(os.path.join(d, k + ".npy"), np.asarray(v, dtype=np.float32))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")


def tf_cases():
    import tensorflow as tf

    def transpose(name, in_sp, cin, cout, k, s, d, padding, out_sp, grads=False, data_format="channels_last"):
        n = 2
        nd = len(in_sp)
        last = data_format == "channels_last"
        x = arr(n, *in_sp, cin) if last else arr(n, cin, *in_sp)
        w = arr(*k, cout, cin)
        out_shape = [n, *out_sp, cout] if last else [n, cout, *out_sp]
        pad = padding.upper() if isinstance(padding, str) else (
            [[0, 0], *[list(p) for p in padding], [0, 0]] if last else [[0, 0], [0, 0], *[list(p) for p in padding]])
        fmt = {1: "NWC", 2: "NHWC", 3: "NDHWC"}[nd] if last else {1: "NCW", 2: "NCHW", 3: "NCDHW"}[nd]
        xt, wt = tf.constant(x), tf.constant(w)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xt)
            tape.watch(wt)
            y = tf.nn.conv_transpose(xt, wt, out_shape, strides=list(s), padding=pad,
                                     data_format=fmt, dilations=list(d))
            gy = arr(*y.shape)
            loss = tf.reduce_sum(y * gy)
        arrays = {"x": x, "w": w, "y": y.numpy()}
        if grads:
            arrays.update(gy=gy, gx=tape.gradient(loss, xt).numpy(), gw=tape.gradient(loss, wt).numpy())
        save(name, dict(framework="tensorflow", op="conv_transpose", strides=list(s), dilations=list(d),
                        padding=padding if isinstance(padding, str) else [list(p) for p in padding],
                        output_size=list(out_sp), data_format=data_format,
                        call=f"tf.nn.conv_transpose(x, w, {out_shape}, strides={list(s)}, padding={pad!r}, data_format={fmt!r}, dilations={list(d)})"),
             arrays)

    transpose("tf_t2d_same_k3s2_even", [4, 5], 3, 2, [3, 3], [2, 2], [1, 1], "same", [8, 10], grads=True)
    transpose("tf_t2d_same_k3s2_odd", [4, 5], 3, 2, [3, 3], [2, 2], [1, 1], "same", [7, 9])
    transpose("tf_t2d_same_k4s2", [3, 4], 2, 3, [4, 4], [2, 2], [1, 1], "same", [6, 8])
    transpose("tf_t2d_same_k1s3", [3, 2], 2, 2, [1, 1], [3, 3], [1, 1], "same", [9, 5])
    transpose("tf_t2d_valid_k3s2", [4, 3], 3, 2, [3, 3], [2, 2], [1, 1], "valid", [9, 8], grads=True)
    transpose("tf_t2d_valid_k2s3", [3, 3], 2, 2, [2, 2], [3, 3], [1, 1], "valid", [8, 9])
    transpose("tf_t2d_explicit", [4, 4], 2, 3, [3, 3], [2, 2], [1, 1], [(1, 2), (0, 1)], [7, 8], grads=True)
    transpose("tf_t2d_dilated", [5, 4], 2, 2, [3, 3], [1, 1], [2, 2], "same", [5, 4])
    transpose("tf_t2d_nchw", [4, 4], 3, 2, [3, 3], [2, 2], [1, 1], "same", [8, 7], data_format="channels_first")
    transpose("tf_t1d_same", [6], 3, 2, [5], [3], [1], "same", [17], grads=True)
    transpose("tf_t3d_valid", [2, 3, 2], 2, 2, [2, 3, 2], [2, 1, 2], [1, 1, 1], "valid", [4, 5, 5])

    def conv(name, in_sp, cin, cout, k, s, d, padding, grads=False, groups=1):
        # TensorFlow takes no group count: a kernel with cin / groups input channels implies it.
        n = 2
        x = arr(n, *in_sp, cin)
        w = arr(*k, cin // groups, cout)
        pad = padding.upper() if isinstance(padding, str) else [[0, 0], *[list(p) for p in padding], [0, 0]]
        xt, wt = tf.constant(x), tf.constant(w)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xt)
            tape.watch(wt)
            if len(in_sp) == 2:
                y = tf.nn.conv2d(xt, wt, strides=list(s), padding=pad, dilations=list(d))
            else:
                y = tf.nn.convolution(xt, wt, strides=list(s), padding=pad, dilations=list(d))
            gy = arr(*y.shape)
            loss = tf.reduce_sum(y * gy)
        arrays = {"x": x, "w": w, "y": y.numpy()}
        if grads:
            arrays.update(gy=gy, gx=tape.gradient(loss, xt).numpy(), gw=tape.gradient(loss, wt).numpy())
        save(name, dict(framework="tensorflow", op="conv", strides=list(s), dilations=list(d),
                        padding=padding if isinstance(padding, str) else [list(p) for p in padding],
                        data_format="channels_last",
                        call=f"tf.nn.{'conv2d' if len(in_sp) == 2 else 'convolution'}(x, w, strides={list(s)}, padding={pad!r}, dilations={list(d)})"),
             arrays)

    conv("tf_c2d_same_s2", [7, 8], 3, 2, [3, 3], [2, 2], [1, 1], "same", grads=True)
    conv("tf_c2d_valid", [6, 7], 2, 3, [3, 2], [1, 1], [1, 1], "valid")
    conv("tf_c2d_explicit", [5, 5], 2, 2, [3, 3], [2, 2], [1, 1], [(1, 0), (2, 1)])
    conv("tf_c1d_same_dilated", [9], 2, 3, [3], [1], [2], "same")
    conv("tf_c2d_groups", [6, 5], 4, 6, [3, 3], [1, 1], [1, 1], "same", grads=True, groups=2)

    # Keras 3 Conv*DTranspose: the output length follows its own rule; weights set by hand.
    import keras

    def keras_t(name, in_sp, cin, cout, k, s, d, padding, output_padding):
        n = 2
        nd = len(in_sp)
        layer_cls = {1: keras.layers.Conv1DTranspose, 2: keras.layers.Conv2DTranspose,
                     3: keras.layers.Conv3DTranspose}[nd]
        layer = layer_cls(cout, k, strides=s, padding=padding, output_padding=output_padding,
                          dilation_rate=d, use_bias=True)
        x = arr(n, *in_sp, cin)
        layer.build(x.shape)
        w = arr(*k, cout, cin)
        b = arr(cout)
        layer.set_weights([w, b])
        y = np.asarray(layer(x))
        save(name, dict(framework="keras", op="conv_transpose", strides=list(s), dilations=list(d),
                        padding=padding, output_padding=output_padding, data_format="channels_last",
                        output_size=list(y.shape[1:-1]),
                        call=f"keras.layers.{layer_cls.__name__}({cout}, {k}, strides={s}, padding={padding!r}, output_padding={output_padding}, dilation_rate={d})"),
             {"x": x, "w": w, "b": b, "y": y})

    keras_t("keras_t2d_same", [4, 3], 3, 2, [3, 3], [2, 2], [1, 1], "same", None)
    keras_t("keras_t2d_valid", [4, 3], 3, 2, [3, 3], [2, 2], [1, 1], "valid", None)
    keras_t("keras_t2d_valid_k2s3", [3, 2], 2, 2, [2, 2], [3, 3], [1, 1], "valid", None)
    keras_t("keras_t2d_same_op", [4, 3], 2, 3, [3, 3], [2, 2], [1, 1], "same", [0, 1])
    keras_t("keras_t2d_valid_op", [3, 3], 2, 2, [4, 3], [2, 2], [1, 1], "valid", [1, 0])
    keras_t("keras_t1d_same", [5], 2, 3, [4], [2], [1], "same", None)


def jax_cases():
    import jax
    import jax.numpy as jnp
    from jax import lax

    def transpose(name, in_sp, cin, cout, k, s, d, padding, transpose_kernel=False, consistent=False, grads=False):
        n = 2
        nd = len(in_sp)
        x = arr(n, *in_sp, cin)
        w = arr(*k, cout, cin) if transpose_kernel else arr(*k, cin, cout)
        pad = padding.upper() if isinstance(padding, str) else [tuple(p) for p in padding]

        def f(x, w):
            return lax.conv_transpose(x, w, s, pad, rhs_dilation=d, transpose_kernel=transpose_kernel,
                                      use_consistent_padding=consistent)

        y, vjp = jax.vjp(f, jnp.asarray(x), jnp.asarray(w))
        arrays = {"x": x, "w": w, "y": np.asarray(y)}
        if grads:
            gy = arr(*y.shape)
            gx, gw = vjp(jnp.asarray(gy))
            arrays.update(gy=gy, gx=np.asarray(gx), gw=np.asarray(gw))
        save(name, dict(framework="jax", op="conv_transpose", strides=list(s), dilations=list(d),
                        padding=padding if isinstance(padding, str) else [list(p) for p in padding],
                        transpose_kernel=transpose_kernel, consistent_padding=consistent,
                        data_format="channels_last",
                        call=f"lax.conv_transpose(x, w, {s}, {pad!r}, rhs_dilation={d}, transpose_kernel={transpose_kernel}, use_consistent_padding={consistent})"),
             arrays)

    transpose("jax_t2d_same_k3s2", [4, 5], 3, 2, [3, 3], [2, 2], [1, 1], "same", grads=True)
    transpose("jax_t2d_same_k4s2", [3, 4], 2, 3, [4, 4], [2, 2], [1, 1], "same")
    transpose("jax_t2d_same_k2s3", [3, 3], 2, 2, [2, 2], [3, 3], [1, 1], "same")
    transpose("jax_t2d_valid_k3s2", [4, 3], 3, 2, [3, 3], [2, 2], [1, 1], "valid", grads=True)
    transpose("jax_t2d_valid_k2s3", [3, 2], 2, 2, [2, 2], [3, 3], [1, 1], "valid")
    transpose("jax_t2d_dilated", [4, 4], 2, 2, [3, 3], [2, 2], [2, 1], "same")
    transpose("jax_t2d_explicit", [4, 4], 2, 3, [3, 3], [2, 2], [1, 1], [(2, 0), (1, 3)], grads=True)
    transpose("jax_t2d_explicit_crop", [4, 4], 2, 2, [3, 3], [2, 2], [1, 1], [(-1, 1), (0, -2)])
    transpose("jax_t2d_transpose_kernel", [4, 5], 3, 2, [3, 3], [2, 2], [1, 1], "same", transpose_kernel=True, grads=True)
    transpose("jax_t2d_consistent", [4, 4], 2, 3, [4, 4], [2, 2], [1, 1], [(1, 1), (1, 2)], consistent=True)
    transpose("jax_t1d_valid", [5], 2, 3, [4], [3], [1], "valid", grads=True)
    transpose("jax_t3d_same", [2, 3, 2], 2, 2, [2, 3, 2], [2, 1, 2], [1, 1, 1], "same")

    def conv(name, in_sp, cin, cout, k, s, d, padding, groups=1, grads=False):
        n = 2
        nd = len(in_sp)
        x = arr(n, *in_sp, cin)
        w = arr(*k, cin // groups, cout)
        pad = padding.upper() if isinstance(padding, str) else [tuple(p) for p in padding]
        spec = {1: ("NHC", "HIO", "NHC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NHWDC", "HWDIO", "NHWDC")}[nd]

        def f(x, w):
            return lax.conv_general_dilated(x, w, s, pad, rhs_dilation=d, dimension_numbers=spec,
                                            feature_group_count=groups)

        y, vjp = jax.vjp(f, jnp.asarray(x), jnp.asarray(w))
        arrays = {"x": x, "w": w, "y": np.asarray(y)}
        if grads:
            gy = arr(*y.shape)
            gx, gw = vjp(jnp.asarray(gy))
            arrays.update(gy=gy, gx=np.asarray(gx), gw=np.asarray(gw))
        save(name, dict(framework="jax", op="conv", strides=list(s), dilations=list(d),
                        padding=padding if isinstance(padding, str) else [list(p) for p in padding],
                        groups=groups, data_format="channels_last",
                        call=f"lax.conv_general_dilated(x, w, {s}, {pad!r}, rhs_dilation={d}, dimension_numbers={spec}, feature_group_count={groups})"),
             arrays)

    conv("jax_c2d_same_s2", [7, 8], 3, 2, [3, 3], [2, 2], [1, 1], "same", grads=True)
    conv("jax_c2d_same_lower", [6, 7], 2, 2, [4, 3], [1, 2], [1, 1], "same_lower")
    conv("jax_c2d_explicit_groups", [6, 6], 4, 6, [3, 3], [2, 1], [1, 1], [(1, 2), (0, 1)], groups=2, grads=True)
    conv("jax_c3d_valid", [4, 4, 3], 2, 2, [2, 2, 2], [1, 2, 1], [1, 1, 1], "valid")


if __name__ == "__main__":
    import sys
    which = sys.argv[1:] or ["tf", "jax"]
    if "tf" in which:
        tf_cases()
    if "jax" in which:
        jax_cases()
