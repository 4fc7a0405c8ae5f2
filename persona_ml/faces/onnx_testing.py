"""Small ONNX stand-ins for insightface packs, with the real models' signatures.

Real packs (buffalo_l, antelopev2) are downloaded from the internet, which tests, demos and CI
must not do. These builders write tiny, deterministic models that keep the structural switches
the backend depends on, so loading, provider selection, batching, alignment and the retry
logic run against the same code paths as with the real files:

- detector (SCRFD-like): input ``input.1`` ``[1, 3, ?, ?]``; nine outputs ``[N, 1]`` scores,
  ``[N, 4]`` box distances, ``[N, 10]`` keypoint distances for strides 8, 16 and 32, two anchors
  per location (``N = (H / s) * (W / s) * 2``), distances in stride units from the anchor point.
- recognizer (ArcFace-like): input ``input.1`` ``[None, 3, 112, 112]``; one output ``[None, 512]``.

Nothing in the library uses this module implicitly: it is imported only by tests, the demo, or a
user who wants a fake pack on purpose.

What the fake detector "sees": a **face is a bright square on a dark background whose side
equals one detector stride (8, 16 or 32 px at detection resolution) and that is aligned to that
stride's grid**. Per stride, the mean brightness of each grid cell is compared with its eight
neighbours (centre minus the ring mean); a bright cell on dark surroundings scores ~1, anything
else ~0. The box is that cell; the five keypoints are insightface's ``arcface_dst`` template
scaled into it, so ``norm_crop`` maps the cell onto the 112x112 crop. ``draw_face`` paints such a
square with a texture chosen by ``pattern``, which the recognizer turns into a distinct embedding.

The fake recognizer averages the aligned 112x112 crop over 8x8 blocks, subtracts their mean and
multiplies the ``3 * 14 * 14`` values by a fixed random matrix (seeded): the same crop gives the same embedding,
different textures give clearly different ones.

Example:
    >>> from persona_ml.faces.onnx_testing import write_fake_pack
    >>> pack = write_fake_pack(tmp_path / "buffalo_fake")            # doctest: +SKIP
    >>> FaceEmbedder("insightface", model_dir=pack)                   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
EMBEDDING_DIM = 512
REC_SIZE = 112
_OPSET = 17
_IR_VERSION = 8  # loadable by every onnxruntime from 1.14 on

# insightface.utils.face_align.arcface_dst: the 5-point template of the 112x112 ArcFace crop.
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)

# The template spans about x 38..74, y 51..92 of 112; keypoints inside a one-stride box are the
# template scaled to the unit cell, so the similarity transform maps the box onto the crop.
_KPS_UNIT = (ARCFACE_DST / float(REC_SIZE)).reshape(-1)


def _helpers():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:  # pragma: no cover - onnx is a dependency of insightface
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError("building fake ONNX models needs the 'onnx' package: pip install onnx",
                                      field="package", value="onnx") from exc
    return onnx, TensorProto, helper, numpy_helper


def _save(model, path: str | os.PathLike) -> Path:
    onnx, *_ = _helpers()
    onnx.checker.check_model(model)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, out)
    return out


def build_detector(*, max_input_side: int | None = None, score_threshold: float = 1.4,
                   anchors: int = NUM_ANCHORS, with_keypoints: bool = True,
                   input_size: tuple[int, int] | None = None):
    """An SCRFD-like detector (``onnx.ModelProto``) with the real input/output signature.

    Args:
        max_input_side: when set, the detector only fires when the input's width is at most
            this many pixels (models SCRFD's miss of faces that fill the frame; tests use it to
            check the retry at smaller detection sizes).
        score_threshold: centre-minus-ring brightness (normalised units, max 2) where the score
            crosses 0.5.
        anchors: anchors per location (SCRFD: 2).
        with_keypoints: ``False`` drops the keypoint outputs (6 outputs, like SCRFD without kps).
        input_size: ``(width, height)`` for an export with a fixed input (default: dynamic ``?``).

    Returns:
        The ``onnx.ModelProto``.
    """
    onnx, TensorProto, helper, numpy_helper = _helpers()
    nodes, inits = [], []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    # grey in normalised units: insightface feeds (x - 127.5) / 128, so -1 is black, ~1 is white
    nodes.append(helper.make_node("ReduceMean", ["input.1"], ["grey"], axes=[1], keepdims=1))
    ring = np.full((1, 1, 3, 3), -1.0 / 8.0, np.float32)
    ring[0, 0, 1, 1] = 1.0
    const("ring_kernel", ring)
    const("steep", np.array(10.0, np.float32))
    const("thr", np.array(score_threshold, np.float32))
    const("zero", np.array(0.0, np.float32))
    const("perm_shape", np.array([-1, 1], np.int64))
    const("box_unit", np.array([[0.0, 0.0, 1.0, 1.0]], np.float32))
    const("kps_unit", _KPS_UNIT.reshape(1, 10).astype(np.float32))
    gate = None
    if max_input_side is not None:
        nodes += [
            helper.make_node("Shape", ["input.1"], ["in_shape"]),
            helper.make_node("Gather", ["in_shape", const("idx_w", np.array(3, np.int64))], ["in_w"]),
            helper.make_node("Cast", ["in_w"], ["in_w_f"], to=TensorProto.FLOAT),
            helper.make_node("LessOrEqual", ["in_w_f", const("max_side", np.array(float(max_input_side),
                                                                                    np.float32))], ["gate_b"]),
            helper.make_node("Cast", ["gate_b"], ["gate"], to=TensorProto.FLOAT),
        ]
        gate = "gate"
    scores, boxes, kpss = [], [], []
    for s in STRIDES:
        p = f"s{s}_"
        nodes += [
            helper.make_node("AveragePool", ["grey"], [p + "cell"], kernel_shape=[s, s], strides=[s, s]),
            helper.make_node("Conv", [p + "cell", "ring_kernel"], [p + "resp"], pads=[1, 1, 1, 1]),
            helper.make_node("Sub", [p + "resp", "thr"], [p + "d"]),
            helper.make_node("Mul", [p + "d", "steep"], [p + "logit"]),
            helper.make_node("Sigmoid", [p + "logit"], [p + "sig"]),
        ]
        sig = p + "sig"
        if gate is not None:
            nodes.append(helper.make_node("Mul", [sig, gate], [p + "gated"]))
            sig = p + "gated"
        # [1, 1, h, w] -> [1, A, h, w] -> [1, h, w, A] -> [N, 1]: SCRFD's anchor order
        nodes += [
            helper.make_node("Concat", [sig] * anchors, [p + "anch"], axis=1),
            helper.make_node("Transpose", [p + "anch"], [p + "hwa"], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", [p + "hwa", "perm_shape"], [f"score_{s}"]),
            helper.make_node("Mul", [f"score_{s}", "zero"], [p + "z"]),
            helper.make_node("Add", [p + "z", "box_unit"], [f"bbox_{s}"]),
        ]
        scores.append(f"score_{s}")
        boxes.append(f"bbox_{s}")
        if with_keypoints:
            nodes.append(helper.make_node("Add", [p + "z", "kps_unit"], [f"kps_{s}"]))
            kpss.append(f"kps_{s}")
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 1]) for n in scores]
    outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 4]) for n in boxes]
    outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 10]) for n in kpss]
    in_shape = [1, 3, "?", "?"] if input_size is None else [1, 3, int(input_size[1]), int(input_size[0])]
    graph = helper.make_graph(
        nodes, "fake_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, in_shape)],
        outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)],
                              producer_name="persona_ml.onnx_testing")
    model.ir_version = _IR_VERSION
    return model


def build_recognizer(*, seed: int = 0, dim: int = EMBEDDING_DIM, size: int = REC_SIZE, batch: int | None = None):
    """An ArcFace-like recognizer: ``[None, 3, size, size]`` -> ``[None, dim]``.

    Args:
        seed: seed of the fixed random projection (two seeds = two different "models").
        dim: embedding width (ArcFace: 512).
        size: input side (ArcFace: 112).
        batch: a fixed batch size (``None`` = dynamic, like the real packs).

    Returns:
        The ``onnx.ModelProto``.
    """
    onnx, TensorProto, helper, numpy_helper = _helpers()
    pool = 8
    feat = 3 * (size // pool) * (size // pool)
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((feat, dim)) / np.sqrt(feat)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "proj")]
    # node names are explicit: insightface's ArcFaceONNX treats leading "Sub"/"Mul" nodes as an
    # mxnet model with in-graph normalisation
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[pool, pool], strides=[pool, pool],
                         name="pool0"),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1, name="flatten0"),
        # centring removes the brightness every fake face shares; the texture is the identity
        helper.make_node("ReduceMean", ["flat"], ["flat_mean"], axes=[1], keepdims=1, name="mean0"),
        helper.make_node("Sub", ["flat", "flat_mean"], ["centred"], name="centre0"),
        helper.make_node("MatMul", ["centred", "proj"], ["683"], name="fc0"),
    ]
    graph = helper.make_graph(
        nodes, "fake_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [batch, dim])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)],
                              producer_name="persona_ml.onnx_testing")
    model.ir_version = _IR_VERSION
    return model


def build_landmark_like():
    """A model with 2d106det's signature (``[1, 3, 192, 192]`` -> ``[1, 212]``) that a backend must skip."""
    onnx, TensorProto, helper, numpy_helper = _helpers()
    nodes = [helper.make_node("GlobalAveragePool", ["data"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], axis=1, name="flat"),
             helper.make_node("MatMul", ["f", "w"], ["fc1"], name="fc")]
    graph = helper.make_graph(
        nodes, "fake_landmark", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 212])],
        initializer=[numpy_helper.from_array(np.ones((3, 212), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = _IR_VERSION
    return model


def write_fake_pack(folder: str | os.PathLike, *, layout: str = "flat", name: str | None = None,
                    det_file: str = "det_10g.onnx", rec_file: str = "w600k_r50.onnx",
                    extra_models: bool = True, detector_max_input_side: int | None = None,
                    rec_seed: int = 0, license_text: str | None = None) -> Path:
    """Write a fake insightface pack and return the folder to pass as ``model_dir``.

    Args:
        folder: where to write. ``layout="flat"``: the ONNX files go in ``folder`` itself
            (a ``models/<name>`` folder as insightface keeps them); ``layout="root"``: they go in
            ``folder/models/<name>`` and ``folder`` is returned (insightface's ``root``);
            ``layout="manifest"``: an insightface 2.x ``manifest.json`` (V2) package in ``folder``.
        name: pack name for the ``root`` and ``manifest`` layouts (default: ``folder``'s name).
        det_file / rec_file: file names of the detector and recognizer.
        extra_models: also write a landmark-like model that a backend must ignore.
        detector_max_input_side: see ``build_detector``.
        rec_seed: see ``build_recognizer``.
        license_text: when given, written as ``MODEL.LICENSE`` beside the models.

    Returns:
        The folder to load.
    """
    folder = Path(folder)
    if layout not in ("flat", "root", "manifest"):
        raise ValueError(f"layout must be 'flat', 'root' or 'manifest', got {layout!r}")
    name = name or folder.name
    pack = folder / "models" / name if layout == "root" else folder
    pack.mkdir(parents=True, exist_ok=True)
    det = _save(build_detector(max_input_side=detector_max_input_side), pack / det_file)
    rec = _save(build_recognizer(seed=rec_seed), pack / rec_file)
    if extra_models:
        _save(build_landmark_like(), pack / "2d106det.onnx")
    if license_text is not None:
        (pack / "MODEL.LICENSE").write_text(license_text)
    if layout == "manifest":
        manifest = {
            "manifest_version": 2, "model_id": name, "license": "MODEL.LICENSE",
            "tasks": {
                "detection": {"file": det_file, "sha256": _sha256(det)},
                "recognition": {"file": rec_file, "sha256": _sha256(rec), "embedding_dimension": EMBEDDING_DIM},
            },
        }
        (pack / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def face_pattern(pattern: int, side: int) -> np.ndarray:
    """A bright ``(side, side, 3)`` uint8 texture (mean > 215) that differs per ``pattern`` id.

    The fake detector needs a bright square; the fake recognizer turns the texture into the
    identity. Patterns are smooth at the recognizer's 8x8 pooling, so the same pattern drawn at
    16 or 32 px embeds nearly the same after alignment.
    """
    rng = np.random.default_rng(1000 + int(pattern))
    coarse = rng.uniform(180.0, 255.0, size=(4, 4, 3)).astype(np.float32)
    coarse += 235.0 - coarse.mean()
    from PIL import Image

    img = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def draw_face(canvas: np.ndarray, x: int, y: int, side: int, pattern: int = 0) -> np.ndarray:
    """Paint a fake face (bright textured square) with its top-left corner at ``(x, y)``, in place.

    For the fake detector to fire at detection resolution, ``side`` must map to 8, 16 or 32
    detector pixels and ``(x, y)`` to a multiple of it.
    """
    canvas[y:y + side, x:x + side] = face_pattern(pattern, side)
    return canvas


def blank_image(width: int, height: int, value: int = 0) -> np.ndarray:
    """A dark ``(height, width, 3)`` uint8 canvas."""
    return np.full((height, width, 3), value, dtype=np.uint8)


def faces_image(width: int, height: int, faces: Sequence[tuple[int, int, int, int]]) -> np.ndarray:
    """A dark image with fake faces ``(x, y, side, pattern)`` drawn on it."""
    img = blank_image(width, height)
    for x, y, side, pattern in faces:
        draw_face(img, x, y, side, pattern)
    return img
