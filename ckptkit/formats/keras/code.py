"""Code a Keras model config can carry, found without running it: what Keras's ``safe_mode`` refuses.

A ``.keras`` archive's ``config.json`` and a legacy ``.h5`` file's ``model_config`` attribute
describe the model as JSON. Three things in it make loading run code that is not Keras's:

* ``Lambda`` layers saved with Python bytecode (``{"class_name": "__lambda__"}`` in Keras 3,
  ``"function_type": "lambda"`` in Keras 2 and tf.keras): ``marshal``-ed code that Keras runs
  when ``safe_mode=False`` (and, for legacy ``.h5`` files, in Keras versions whose safe mode did
  not cover them);
* objects whose ``module`` lies outside Keras: Keras before 3.9 imported any module named there
  (CVE-2025-1550), and safe mode loads none it does not know;
* Keras functions that are not model parts (``keras.utils.get_file``,
  ``keras.config.enable_unsafe_deserialization``), which Keras 3.11 and later refuse by name.

Each is a ``keras.code`` error naming the key path where it sits. Globals trusted with
``--allow-global`` (:mod:`ckptkit.core.trust`) pass.
"""

from __future__ import annotations

from typing import Any

from ckptkit.core.trust import trusted_globals

KERAS_PACKAGES = frozenset({"keras", "keras_hub", "keras_cv", "keras_nlp", "tf_keras", "builtins"})
# Keras's own list of functions a model config may not name (keras/src/saving/serialization_lib.py).
NON_MODELING = frozenset({
    "keras.backend.clear_session", "keras.config.enable_unsafe_deserialization", "keras.models.load_model",
    "keras.models.model_from_json", "keras.models.save_model", "keras.preprocessing.image_dataset_from_directory",
    "keras.preprocessing.image.load_img", "keras.preprocessing.image.save_img",
    "keras.preprocessing.text_dataset_from_directory", "keras.saving.deserialize_keras_object",
    "keras.saving.load_model", "keras.saving.load_weights", "keras.saving.register_keras_serializable",
    "keras.saving.save_model", "keras.saving.save_weights", "keras.saving.serialize_keras_object",
    "keras.utils.audio_dataset_from_directory", "keras.utils.clear_session", "keras.utils.deserialize_keras_object",
    "keras.utils.get_file", "keras.utils.image_dataset_from_directory", "keras.utils.load_img",
    "keras.utils.register_keras_serializable", "keras.utils.save_img", "keras.utils.serialize_keras_object",
    "keras.utils.text_dataset_from_directory",
})  # fmt: skip
_MAX_NODES = 10_000_000


def code_problems(config: Any) -> list[tuple[str, str]]:
    """(key path, what) for each piece of code the parsed config carries, in document order."""
    trusted = trusted_globals()
    found: list[tuple[str, str]] = []
    stack: list[tuple[Any, str]] = [(config, "")]
    nodes = 0
    while stack and nodes < _MAX_NODES:
        node, where = stack.pop()
        nodes += 1
        if isinstance(node, dict):
            problem = _problem(node, trusted)
            if problem:
                found.append((where, problem))
            children = [(v, f"{where}.{k}" if where else str(k)) for k, v in node.items()]
        elif isinstance(node, list):
            children = [(v, f"{where}.{i}" if where else str(i)) for i, v in enumerate(node)]
        else:
            continue
        stack.extend(reversed(children))
    return found


def _problem(node: dict[str, Any], trusted: frozenset[str]) -> str | None:
    class_name = node.get("class_name")
    if class_name == "__lambda__":
        return "a Python lambda saved as bytecode, which Keras runs when loading with safe_mode=False"
    for key in ("function_type", "output_shape_type", "mask_type"):
        if node.get(key) == "lambda":
            what = key.removesuffix("_type")
            return f"a Lambda layer whose {what} is Python bytecode, which Keras 2 and tf.keras run when loading"
    module = node.get("module")
    if node.get("function_type") == "function" and isinstance(node.get("function"), str):
        class_name = node["function"]  # a Keras 2 Lambda naming a function by module and name
    if not isinstance(module, str) or not module or not isinstance(class_name, str):
        return None
    name = node.get("config") if class_name == "function" and isinstance(node.get("config"), str) else class_name
    qualname = f"{module}.{name}"
    if qualname in NON_MODELING:
        return f"{qualname}, a Keras function that is not part of a model (Keras 3.11 and later refuse it)"
    if module.split(".")[0] not in KERAS_PACKAGES and qualname not in trusted:
        return (
            f"{qualname}, from a module outside Keras: loading imports and runs it (Keras before 3.9 imports any "
            f"module named here; safe mode loads only objects your code registers); if you trust it, pass "
            f"--allow-global {qualname}"
        )
    return None
