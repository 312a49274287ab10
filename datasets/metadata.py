"""metadata.json: read, validate, write.

A dataset root is the folder holding metadata.json; relative paths in it resolve against that folder
(or against `data_root` when given). Every error a user can cause is raised here, before training
starts, as one MetadataError line naming the entry id and the path.
"""
from __future__ import annotations

import copy
import os
import io
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from datasets.transforms import ImageReadError, decode_image_file, exif_swaps_axes
from utils.checkpoint import atomic_write_text
from utils.errors import UserError

ORDERS = ("ignore", "keep", "reverse", "random")
PARTITIONS = ("train", "val", "test")
METADATA_NAME = "metadata.json"


class MetadataError(UserError):
    """A problem in a dataset's metadata or files; the message names the entry and the path."""


@dataclass
class Entry:
    id: str
    partition: str
    order: str
    blur_path: Path
    frame_paths: list  # resolved paths of frames 1..frame_per_seq, as stored
    bbox: object = None  # None, an inline [x0, y0, x1, y1(, score)] list, or a resolved Path to a pickle
    raw: dict = field(default_factory=dict, repr=False)
    size: tuple | None = None  # (H, W) of its images, set by check_files


def frame_key(k: int) -> str:
    return f"frame{k:03d}_path"


def metadata_file(path) -> Path:
    """Accept either the dataset root or the metadata.json itself."""
    path = Path(path)
    if path.is_dir():
        path = path / METADATA_NAME
    return path


def read_metadata(path) -> dict:
    """Parse metadata.json and check its top-level structure."""
    path = metadata_file(path)
    if not path.is_file():
        if (path.parent / ".replaced").is_dir():  # datasets/writer.py: a replacement killed half-way
            raise MetadataError(f"metadata file not found: {path}: a replacement of this dataset was interrupted; "
                                f"put the old one back with: python prepare_dataset.py summary --out {path.parent}")
        raise MetadataError(f"metadata file not found: {path} (pass the dataset root holding {METADATA_NAME})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MetadataError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("data"), list):
        raise MetadataError(f"{path}: expected an object with a 'data' list of entries")
    fps = meta.get("frame_per_seq", 7)
    if not isinstance(fps, int) or isinstance(fps, bool) or fps < 1:
        raise MetadataError(f"{path}: 'frame_per_seq' must be a positive integer, got {fps!r}")
    return meta


def dataset_name(metadata_root, given: str | None = None) -> str:
    """The dataset's name for run names and reports: `given` (--dataset_name), else the metadata's
    "name", else the dataset folder's name."""
    if given:
        return given
    path = metadata_file(metadata_root)
    name = read_metadata(path).get("name")
    return str(name) if isinstance(name, str) and name.strip() else path.parent.resolve().name


def write_metadata(path, meta: dict, overwrite: bool = True) -> None:
    """Write metadata.json atomically (temporary file, then rename). overwrite=False creates the file only if
    nothing is there at that moment, also when another process races to create it."""
    atomic_write_text(metadata_file(path) if Path(path).is_dir() else Path(path),
                      json.dumps(meta, indent=2, ensure_ascii=False) + "\n", overwrite=overwrite)


def dataset_inputs(metadata_root, entries=None, data_root=None, with_metadata: bool = True):
    """The files a script reads from a dataset (utils.outputs.Inputs): its metadata.json and every image and
    bbox file of `entries` (default: every entry of the metadata, parsed without touching the files)."""
    from utils.outputs import Inputs
    source = metadata_file(metadata_root)
    inputs = Inputs()
    if with_metadata:
        inputs.add(f"the metadata {source}", source)
    if entries is None:
        meta = read_metadata(source)
        entries = parse_entries(meta, Path(data_root) if data_root else source.parent, source=str(source))
    for e in entries:
        for path in (e.blur_path, *e.frame_paths):
            inputs.add(f"an image of entry {e.id} ({path})", path)
        if isinstance(e.bbox, Path):
            inputs.add(f"the bbox file of entry {e.id} ({e.bbox})", e.bbox)
    return inputs


def resolve_target_frames(target_frames: Sequence[int] | None, frame_per_seq: int) -> list:
    if not target_frames:
        return list(range(1, frame_per_seq + 1))
    frames = [int(k) for k in target_frames]
    bad = [k for k in frames if not 1 <= k <= frame_per_seq]
    if bad:
        raise MetadataError(f"--target_frames {bad} out of range: this dataset has frames 1..{frame_per_seq}")
    return frames


def _resolve(root: Path, p: str) -> Path:
    p = Path(p)
    return p if p.is_absolute() else root / p


def _entry_id(raw: dict, index: int) -> str:
    return str(raw.get("id", f"#{index}"))


def parse_entries(meta: dict, root, target_frames: Sequence[int] | None = None,
                  splits: Iterable[str] | None = None, source: str = METADATA_NAME) -> list:
    """Turn raw entries into Entry objects (no file access). Structural errors raise MetadataError."""
    root = Path(root)
    fps = meta.get("frame_per_seq", 7)
    resolve_target_frames(target_frames, fps)  # range check only; datasets pick the frames
    wanted = set(splits) if splits is not None else None
    out, seen = [], {}
    for i, raw in enumerate(meta["data"]):
        if not isinstance(raw, dict):
            raise MetadataError(f"{source}: entry #{i} is not an object")
        eid = _entry_id(raw, i)
        if eid in seen:  # outputs are named by id (test_blur2vid.py --save_images): ids must be unique
            raise MetadataError(f"{source}: entry id {eid!r} is used by entries #{seen[eid]} and #{i}; "
                                "every entry needs its own id")
        seen[eid] = i
        part = raw.get("partition")
        if part not in PARTITIONS:
            raise MetadataError(f"{source}: entry {eid}: partition {part!r} is not one of {', '.join(PARTITIONS)}")
        order = raw.get("order", "ignore")
        if order not in ORDERS:
            raise MetadataError(f"{source}: entry {eid}: order {order!r} is not one of {', '.join(ORDERS)}")
        if wanted is not None and part not in wanted:
            continue
        if not isinstance(raw.get("blur_path"), str):
            raise MetadataError(f"{source}: entry {eid}: missing 'blur_path'")
        paths = []
        for k in range(1, fps + 1):
            key = frame_key(k)
            if not isinstance(raw.get(key), str):
                raise MetadataError(f"{source}: entry {eid}: missing '{key}' (frame_per_seq is {fps})")
            paths.append(_resolve(root, raw[key]))
        bbox = raw.get("bbox")
        if bbox is not None:
            if isinstance(bbox, str):
                bbox = _resolve(root, bbox)
            elif not (isinstance(bbox, (list, tuple)) and len(bbox) in (4, 5)
                      and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
                raise MetadataError(f"{source}: entry {eid}: 'bbox' must be a path to a pickle or a list "
                                    f"[x_min, y_min, x_max, y_max(, score)], got {bbox!r}")
            elif not (bbox[2] > bbox[0] and bbox[3] > bbox[1]):
                raise MetadataError(f"{source}: entry {eid}: 'bbox' {bbox!r} has x_max <= x_min or y_max <= y_min")
        out.append(Entry(eid, part, order, _resolve(root, raw["blur_path"]), paths, bbox, raw))
    return out


def _image_size(path: Path, eid: str, decode: bool) -> tuple:
    """(W, H) of an image: decoded in full (catches truncated and corrupt files), or from its header only."""
    if decode:
        try:
            img, _ = decode_image_file(path)
        except ImageReadError as e:
            raise MetadataError(f"entry {eid}: {e}") from None
        return int(img.shape[2]), int(img.shape[1])
    try:
        with Image.open(path) as im:
            w, h = im.size  # read from the header only
            return (h, w) if exif_swaps_axes(im) else (w, h)  # as decoded: turned as its EXIF orientation says
    except FileNotFoundError:
        raise MetadataError(f"entry {eid}: file not found: {path}") from None
    except Exception as e:
        raise MetadataError(f"entry {eid}: cannot read image {path}: {e}") from None


def _check_entry(e: Entry, decode: bool) -> tuple:
    """Check one entry's files; returns its image size (H, W)."""
    if not e.blur_path.is_file():
        raise MetadataError(f"entry {e.id}: file not found: {e.blur_path}")
    size = _image_size(e.blur_path, e.id, decode)
    for p in e.frame_paths:
        if not p.is_file():
            raise MetadataError(f"entry {e.id}: file not found: {p}")
        s = _image_size(p, e.id, decode)
        if s != size:
            raise MetadataError(f"entry {e.id}: frame {p} is {s[0]}x{s[1]} but the blurry image "
                                f"{e.blur_path} is {size[0]}x{size[1]} (W x H); all must match")
    if isinstance(e.bbox, Path):
        read_bbox(e.bbox, e.id)
    return size[1], size[0]


def check_workers() -> int:
    """Threads for check_files: torchvision's decoders run without the GIL, so threads use the free cores."""
    return max(1, min(8, os.cpu_count() or 1))


def check_files(entries: Sequence[Entry], progress: bool = False, decode: bool = True,
                workers: int | None = None) -> None:
    """Every file exists, is an image, and all frames of a sequence have the blurry image's size; each
    entry's size (H, W) is recorded in entry.size. decode=True decodes every image in full (a truncated
    or corrupt file is found here, not in the middle of an epoch); False reads the headers only
    (--quick_check). The first problem in entry order is raised as one MetadataError."""
    workers = workers or check_workers()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(entries), desc="checking images" if decode else "checking image headers",
                   unit="seq", leave=False, disable=None)
    try:
        if workers == 1:
            for e in entries:
                e.size = _check_entry(e, decode)
                bar is not None and bar.update()
            return
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(workers, thread_name_prefix="check") as pool:
            futures = [pool.submit(_check_entry, e, decode) for e in entries]
            try:
                for e, f in zip(entries, futures):
                    e.size = f.result()
                    bar is not None and bar.update()
            except BaseException:  # the first problem (or Ctrl-C): drop the queued work and stop
                for f in futures:
                    f.cancel()
                raise
    finally:
        if bar is not None:
            bar.close()


def load_split(metadata_root, split: str, target_frames: Sequence[int] | None = None,
               data_root=None, check: bool | str = True, progress: bool = False, limit: int | None = None):
    """Read metadata.json and return (meta, entries of `split`), validated.

    metadata_root: the dataset root (or the metadata.json path). data_root overrides the folder
    relative paths resolve against. limit: keep the split's first `limit` entries (--<split>_limit).
    check: True decodes every image of the split in full, "headers" reads the headers only, False nothing.
    """
    if split not in PARTITIONS:
        raise MetadataError(f"unknown split {split!r}: use one of {', '.join(PARTITIONS)}")
    path = metadata_file(metadata_root)
    meta = read_metadata(path)
    root = Path(data_root) if data_root is not None else path.parent
    entries = parse_entries(meta, root, target_frames, splits=[split], source=str(path))
    if not entries:
        raise MetadataError(f"{path}: the '{split}' split is empty")
    if limit is not None:
        entries = entries[:limit]
    if check:
        check_files(entries, progress=progress, decode=check != "headers")
    return meta, entries


# --- B-AIST++ boxes ---------------------------------------------------------------------------------

class _BoxUnpickler(pickle.Unpickler):
    """Unpickles only plain containers, numbers, and numpy arrays/scalars: what a box needs.

    Anything else (a class that could run code while loading) is refused.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("builtins", "list"), ("builtins", "tuple"), ("builtins", "dict"), ("builtins", "float"),
        ("builtins", "int"), ("collections", "OrderedDict"), ("_codecs", "encode"),
        # pickle protocol 5 stores arrays through frombuffer (plain bytes -> array)
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_bbox(path: Path, eid: str = "?") -> list:
    """[x_min, y_min, x_max, y_max] from a B-AIST++ box pickle ({"bbox": [...]}), safely."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise MetadataError(f"entry {eid}: bbox file not found: {path}") from None
    try:
        obj = _BoxUnpickler(io.BytesIO(data)).load()
    except Exception as e:
        raise MetadataError(f"entry {eid}: cannot read bbox pickle {path}: {e}") from None
    box = obj.get("bbox") if isinstance(obj, dict) else obj
    try:
        values = [float(v) for v in list(box)[:4]]
    except Exception:
        values = []
    if len(values) != 4 or not (values[2] > values[0] and values[3] > values[1]):
        raise MetadataError(f"entry {eid}: {path} holds no valid box [x_min, y_min, x_max, y_max]: {box!r}")
    return values


def entry_bbox(entry: Entry):
    if entry.bbox is None:
        return None
    if isinstance(entry.bbox, Path):
        return read_bbox(entry.bbox, entry.id)
    values = [float(v) for v in entry.bbox[:4]]
    if not (values[2] > values[0] and values[3] > values[1]):
        raise MetadataError(f"entry {entry.id}: bbox {entry.bbox} has x_max <= x_min or y_max <= y_min")
    return values


def with_orders(meta: dict, orders: dict) -> dict:
    """A copy of meta where entry i's order is orders[i] (index -> str); everything else untouched."""
    out = copy.deepcopy(meta)
    for i, order in orders.items():
        if order not in ORDERS:
            raise ValueError(f"order {order!r} is not one of {ORDERS}")
        out["data"][i]["order"] = order
    return out


def rebased(meta: dict, from_dir, to_dir) -> dict:
    """A copy of meta whose relative file paths (blur_path, frameNNN_path, a bbox path), which resolve
    against from_dir, resolve against to_dir instead: written relative to to_dir. Absolute paths and
    every other field stay as they are; nothing changes when both folders are the same."""
    out = copy.deepcopy(meta)
    src, dst = Path(from_dir).resolve(), Path(to_dir).resolve()
    if src == dst:
        return out
    keys = ["blur_path", "bbox"] + [frame_key(k) for k in range(1, out.get("frame_per_seq", 7) + 1)]
    for entry in out["data"]:
        for k in keys:
            value = entry.get(k) if isinstance(entry, dict) else None
            if isinstance(value, str) and not Path(value).is_absolute():
                entry[k] = Path(os.path.relpath(src / value, dst)).as_posix()
    return out
