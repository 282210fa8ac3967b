"""TensorFlow's side of the TensorFlow checkpoint tests, run in a subprocess of its own.

``python tests/tf_reference.py`` reads one JSON request per line on stdin and answers each with one
JSON line, so that TensorFlow is imported once per test session, and never in the test process
beside torch:

- ``{"make": OUT}`` writes checkpoints with TensorFlow 2 (Keras 3 on the TensorFlow backend) into
  OUT, and what TensorFlow reads back from each into OUT/expected/ (every tensor's bytes, dtype and
  shape by checkpoint key, plus model inputs and predictions);
- ``{"manager": OUT}`` trains a small Keras model, saving it with ``tf.train.CheckpointManager``
  every few steps into OUT/runs/train (numbered by step), and dumps what TensorFlow reads from each kept
  checkpoint into OUT/expected/;
- ``{"check": [...]}`` loads checkpoints ckptkit wrote, with ``tf.train.load_checkpoint`` and by
  restoring them into the Keras models, and answers with a verdict per checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras
import ml_dtypes
import numpy as np
import tensorflow as tf

SEED = 7


def dense_model() -> keras.Model:
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="dense"), keras.layers.Dense(2, name="out")], name="sequential"
    )


def cnn_model() -> keras.Model:
    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten(name="flat")(x)
    out = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inp, out, name="cnn")


def dump(prefix: str, out: Path) -> None:
    """Every tensor TensorFlow reads from ``prefix``: raw bytes in an npz, dtype and shape in JSON."""
    reader = tf.train.load_checkpoint(prefix)
    meta, arrays = {}, {}
    for i, (key, _shape) in enumerate(sorted(tf.train.list_variables(prefix))):
        value = reader.get_tensor(key)
        if isinstance(value, bytes) or getattr(value, "dtype", None) is np.dtype(object):
            meta[key] = {"dtype": "string"}
            continue
        value = np.asarray(value)
        meta[key] = {"dtype": value.dtype.name, "shape": list(value.shape), "index": i}
        arrays[f"t{i}"] = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out.with_suffix(".npz"), **arrays)
    out.with_suffix(".json").write_text(json.dumps(meta))


def make(root: Path) -> None:
    tf.keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    expected = root / "expected"
    expected.mkdir(parents=True)

    # A Keras model trained with Adam, saved twice by tf.train.Checkpoint (a 'checkpoint' file keeps both).
    model = dense_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    x = rng.standard_normal((5, 4)).astype(np.float32)
    y = rng.standard_normal((5, 2)).astype(np.float32)
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    model.fit(x, y, epochs=1, verbose=0)
    first = ckpt.save(str(root / "keras" / "ckpt"))
    np.save(expected / "keras_pred_1.npy", model.predict(x, verbose=0))
    model.fit(x, y, epochs=2, verbose=0)
    second = ckpt.save(str(root / "keras" / "ckpt"))
    np.save(expected / "keras_x.npy", x)
    np.save(expected / "keras_pred_2.npy", model.predict(x, verbose=0))
    model.save_weights(str(root / "keras_dense.weights.h5"))
    dump(first, expected / "keras_1")
    dump(second, expected / "keras_2")

    # A functional CNN, written once, with its Keras weights file beside it; and a fresh copy of
    # the model as a template.
    cnn = cnn_model()
    cnn.compile(optimizer="sgd", loss="mse")
    cx = rng.standard_normal((3, 6, 6, 2)).astype(np.float32)
    cnn.fit(cx, rng.standard_normal((3, 3)).astype(np.float32), epochs=1, verbose=0)
    tf.train.Checkpoint(model=cnn).write(str(root / "cnn" / "ckpt"))
    cnn.save_weights(str(root / "cnn.weights.h5"))
    np.save(expected / "cnn_x.npy", cx)
    np.save(expected / "cnn_pred.npy", cnn.predict(cx, verbose=0))
    tf.train.Checkpoint(model=cnn_model()).write(str(root / "cnn_template" / "ckpt"))
    dump(str(root / "cnn" / "ckpt"), expected / "cnn")

    # TF1 Saver: half, bfloat16, int64, complex and bool variables, a partitioned variable, two data files.
    graph = tf.Graph()
    with graph.as_default():
        with tf.device("/cpu:0"):
            tf.compat.v1.get_variable("bert/embeddings/w16", initializer=rng.standard_normal((3, 4)).astype(np.float16))
            tf.compat.v1.get_variable(
                "bert/embeddings/wbf16", initializer=tf.constant(rng.standard_normal((2, 3)), dtype=tf.bfloat16)
            )
            tf.compat.v1.get_variable("bert/ids", initializer=np.array([1, -2, 2**40], np.int64))
            tf.compat.v1.train.get_or_create_global_step()
        with tf.device("/cpu:1"):
            tf.compat.v1.get_variable("extra/c64", initializer=(rng.standard_normal(3) + 1j).astype(np.complex64))
            tf.compat.v1.get_variable("extra/mask", initializer=np.array([True, False, True]))
            tf.compat.v1.get_variable(
                "part/w", shape=[10, 3], dtype=tf.float32, partitioner=tf.compat.v1.fixed_size_partitioner(3),
                initializer=tf.compat.v1.random_normal_initializer(seed=1),
            )  # fmt: skip
        saver = tf.compat.v1.train.Saver(sharded=True)
        config = tf.compat.v1.ConfigProto(device_count={"CPU": 2})
        with tf.compat.v1.Session(config=config) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            (root / "tf1").mkdir()
            tf1 = saver.save(sess, str(root / "tf1" / "model.ckpt"), global_step=7)
    dump(tf1, expected / "tf1")

    # Optimizer slots (.OPTIMIZER_SLOT) from a TF1 optimizer used eagerly in an object-based checkpoint.
    module = tf.Module()
    module.dense = tf.Module()
    module.dense.kernel = tf.Variable(rng.standard_normal((2, 2)).astype(np.float32), name="kernel")
    opt = tf.compat.v1.train.AdamOptimizer(0.1)
    opt.apply_gradients([(tf.ones((2, 2)), module.dense.kernel)])
    slots = tf.train.Checkpoint(model=module, optimizer=opt, step=tf.Variable(5)).save(str(root / "slots" / "ckpt"))
    dump(slots, expected / "slots")

    # A SavedModel, and every numeric dtype (and a string) written by the raw save op.
    holder = tf.Module()
    holder.v = tf.Variable(rng.standard_normal((4, 2)).astype(np.float64))
    tf.saved_model.save(holder, str(root / "saved_model"))
    dump(str(root / "saved_model" / "variables" / "variables"), expected / "saved_model")
    from tensorflow.python.framework import dtypes as tf_dtypes

    values = {}
    names = ("float32", "float64", "float16", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "uint16",
             "uint32", "uint64", "complex64", "complex128", "bool", "float8_e4m3fn", "float8_e5m2", "int4")  # fmt: skip
    for name in names:
        dtype = getattr(tf_dtypes, name)
        raw = rng.standard_normal((2, 3)) * 3
        if name.startswith("complex"):
            raw = raw + 1j * raw[::-1]
        if name == "bool":
            values[f"dt/{name}"] = tf.constant(raw > 0)
        elif name.startswith(("float8", "int4")):  # TensorFlow casts to these only from numpy
            values[f"dt/{name}"] = tf.constant(raw.astype(getattr(ml_dtypes, name)), dtype=dtype)
        else:
            values[f"dt/{name}"] = tf.cast(tf.constant(raw), dtype)
    values["dt/scalar"] = tf.constant(np.float32(1.5))
    values["dt/empty"] = tf.zeros((0, 3), tf.float32)
    values["dt/text"] = tf.constant(["a", "bc"])
    names = sorted(values)
    tf.raw_ops.SaveV2(
        prefix=str(root / "dtypes" / "ckpt"), tensor_names=names, shape_and_slices=[""] * len(names),
        tensors=[values[n] for n in names],
    )  # fmt: skip
    dump(str(root / "dtypes" / "ckpt"), expected / "dtypes")


def manager_run(root: Path) -> list[str]:
    """Three saves by a CheckpointManager that keeps them all, named by step: ckpt-4, ckpt-8, ckpt-12."""
    tf.keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    model = dense_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    x = rng.standard_normal((8, 4)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, optimizer=model.optimizer), str(root / "runs" / "train"), max_to_keep=3
    )
    saved = []
    for step in (4, 8, 12):
        model.fit(x, y, epochs=4, batch_size=8, verbose=0)
        saved.append(manager.save(checkpoint_number=step))
    for prefix in saved:
        dump(prefix, root / "expected" / Path(prefix).name)
    return [Path(p).name for p in saved]


def check(requests: list[dict]) -> dict:
    """Load what ckptkit wrote; one verdict per request."""
    verdicts = {}
    for req in requests:
        prefix = req["prefix"]
        verdict: dict = {}
        try:
            if req.get("dump"):
                dump(prefix, Path(req["dump"]))
                verdict["variables"] = sorted(k for k, _ in tf.train.list_variables(prefix))
            if req.get("restore"):
                model = dense_model() if req["restore"] == "dense" else cnn_model()
                # read(), not restore(): a checkpoint without a save counter is complete too.
                tf.train.Checkpoint(model=model).read(prefix).assert_existing_objects_matched()
                x = np.load(req["x"])
                verdict["predictions_equal"] = bool(
                    np.array_equal(model.predict(x, verbose=0), np.load(req["predictions"]))
                )
        except Exception as err:  # the verdict reports what TensorFlow said
            verdict["error"] = f"{type(err).__name__}: {err}"
        verdicts[req["name"]] = verdict
    return verdicts


if __name__ == "__main__":
    for line in sys.stdin:
        request = json.loads(line)
        if "make" in request:
            make(Path(request["make"]))
            answer: dict = {"made": request["make"]}
        elif "manager" in request:
            answer = {"saved": manager_run(Path(request["manager"]))}
        else:
            answer = check(request["check"])
        print(json.dumps(answer), flush=True)
