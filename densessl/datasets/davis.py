"""DAVIS-2016 / DAVIS-2017 readers and result-mask I/O.

Layout (both years)::

    <root>/JPEGImages/<resolution>/<seq>/00000.jpg ...
    <root>/Annotations/<resolution>/<seq>/00000.png ...
    <root>/ImageSets/2017/<split>.txt          # 2017: one sequence name per line
    <root>/ImageSets/<resolution>/<split>.txt  # 2016: frame pairs, one a line:
        /JPEGImages/480p/<seq>/00000.jpg /Annotations/480p/<seq>/00000.png

Annotation semantics by year:

* 2017: palette PNGs, pixel value = object id, 0 = background, 255 = void.
* 2016: single object; grayscale 0/255 masks (one file is grayscale+alpha, palette masks are
  accepted too). Any nonzero pixel is object 1.

Everything is lazy: building a dataset only lists folders; pixels are read on access.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from densessl.datasets.palette import davis_palette, read_id_png, write_indexed_png
from densessl.errors import InputError

__all__ = [
    "DavisDataset",
    "DavisSequence",
    "VOID_ID",
    "davis_palette",
    "read_result_masks",
    "write_indexed_png",
]

VOID_ID = 255
_FRAME_SUFFIXES = (".jpg", ".jpeg")
_YEARS = (2016, 2017)


def _image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file, read from its header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError as error:
        raise InputError("file not found", path) from error
    except Exception as error:  # PIL raises many types for corrupt files
        raise InputError(f"cannot read image ({error})", path) from error
    return height, width


@dataclass
class DavisSequence:
    """One video of a DAVIS set; frames and masks are read on access.

    ``mask_paths[i]`` is None where frame ``i`` has no annotation. ``annotation_dir`` is where
    annotations are expected (used to name missing files in errors).
    """

    name: str
    frame_paths: list[Path]
    mask_paths: list[Path | None]
    year: int = 2017
    annotation_dir: Path | None = None
    _size: tuple[int, int] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.frame_paths) != len(self.mask_paths):
            raise ValueError("frame_paths and mask_paths must have the same length")
        if self.year not in _YEARS:
            raise InputError(f"year must be one of {_YEARS}, got {self.year}")

    @property
    def num_frames(self) -> int:
        return len(self.frame_paths)

    def __len__(self) -> int:
        return self.num_frames

    @property
    def frame_names(self) -> list[str]:
        """File stems of the frames ('00000', '00001', ...): result files use the same names."""
        return [path.stem for path in self.frame_paths]

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the frames (from the first frame's header)."""
        if self._size is None:
            self._size = _image_size(self.frame_paths[0])
        return self._size

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as an ``H×W×3`` uint8 RGB array."""
        path = self.frame_paths[index]
        try:
            with Image.open(path) as image:
                rgb = np.array(image.convert("RGB"), dtype=np.uint8)
        except FileNotFoundError as error:
            raise InputError("file not found", path) from error
        except Exception as error:
            raise InputError(f"cannot read image ({error})", path) from error
        if rgb.shape[:2] != self.size:
            raise InputError(
                f"frame size {rgb.shape[1]}x{rgb.shape[0]} differs from the sequence's first "
                f"frame {self.size[1]}x{self.size[0]}",
                path,
            )
        return rgb

    def expected_mask_path(self, index: int) -> Path:
        """Where the annotation of frame ``index`` is (or would be)."""
        found = self.mask_paths[index]
        if found is not None:
            return found
        folder = self.annotation_dir or self.frame_paths[index].parent
        return folder / f"{self.frame_paths[index].stem}.png"

    def has_mask(self, index: int) -> bool:
        return self.mask_paths[index] is not None

    @property
    def annotated_indices(self) -> list[int]:
        return [i for i, path in enumerate(self.mask_paths) if path is not None]

    def mask(self, index: int) -> np.ndarray:
        """Annotation of frame ``index`` as an ``H×W`` uint8 id map (see module doc for years)."""
        path = self.mask_paths[index]
        if path is None:
            raise InputError(
                f"frame {self.frame_paths[index].name} of sequence '{self.name}' has no annotation",
                self.expected_mask_path(index),
            )
        ids = read_id_png(path)
        if ids.shape != self.size:
            raise InputError(
                f"mask size {ids.shape[1]}x{ids.shape[0]} differs from the frame size "
                f"{self.size[1]}x{self.size[0]}",
                path,
            )
        if self.year == 2016:
            ids = (ids != 0).astype(np.uint8)
        return ids

    def first_mask(self) -> np.ndarray:
        """The first frame's annotation, ``H×W`` uint8 ids."""
        return self.mask(0)

    def object_ids(self) -> list[int]:
        """Object ids present in the first mask (0 = background and 255 = void excluded)."""
        ids = np.unique(self.first_mask())
        return [int(i) for i in ids if i != 0 and i != VOID_ID]

    def masks(self, *, require_all: bool = False) -> np.ndarray:
        """Annotations of the annotated frames stacked ``T×H×W`` uint8, in frame order.

        With ``require_all`` every frame must be annotated (an InputError names the first
        missing file); then ``T == num_frames``.
        """
        if require_all:
            for index, path in enumerate(self.mask_paths):
                if path is None:
                    raise InputError(
                        f"annotation missing for frame {self.frame_paths[index].name} of "
                        f"sequence '{self.name}' (every frame must be annotated here)",
                        self.expected_mask_path(index),
                    )
        indices = self.annotated_indices
        if not indices:
            height, width = self.size
            return np.zeros((0, height, width), dtype=np.uint8)
        return np.stack([self.mask(i) for i in indices])


def _close_matches(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    return f" (close matches: {', '.join(close)})" if close else ""


def _parse_imageset(path: Path) -> list[str]:
    """Sequence names, in order of first appearance, from a DAVIS ImageSets file.

    Lines are either a sequence name (2017 style) or a frame pair
    ``/JPEGImages/480p/<seq>/00000.jpg /Annotations/480p/<seq>/00000.png`` (2016 style).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read sequence list ({error})", path) from error
    names: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        first = tokens[0]
        if "/" in first:
            parts = [part for part in first.split("/") if part]
            if len(parts) < 2:
                raise InputError(f"line {number}: cannot find a sequence name in '{line}'", path)
            name = parts[-2]
        else:
            name = first
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


class DavisDataset:
    """A DAVIS-2016 or DAVIS-2017 split: an ordered collection of :class:`DavisSequence`.

    Args:
        root: folder holding ``JPEGImages``, ``Annotations`` and ``ImageSets``.
        year: 2017 (palette masks, several objects, 255 = void) or 2016 (binary masks).
        split: name of the ImageSets list ('train', 'val', 'trainval', 'test-dev', ...).
        resolution: resolution folder name ('480p', 'Full-Resolution', '1080p', ...).
        sequences: optional subset of sequence names; when given, the ImageSets list is only
            used to check the names (and is not required).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        year: int = 2017,
        split: str = "val",
        resolution: str = "480p",
        sequences: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.year = int(year)
        self.split = split
        self.resolution = resolution
        if self.year not in _YEARS:
            raise InputError(f"year must be 2016 or 2017, got {year}")
        if not self.root.is_dir():
            raise InputError("DAVIS root folder not found", self.root)
        self.image_root = self.root / "JPEGImages" / resolution
        self.annotation_root = self.root / "Annotations" / resolution
        for folder in (self.image_root, self.annotation_root):
            if not folder.is_dir():
                raise InputError(f"folder not found (resolution '{resolution}')", folder)

        if isinstance(sequences, str):
            sequences = [sequences]
        self.imageset_path: Path | None = None
        if sequences is None:
            self.imageset_path = self._find_imageset(required=True)
            assert self.imageset_path is not None
            names = _parse_imageset(self.imageset_path)
            if not names:
                raise InputError("the sequence list is empty", self.imageset_path)
        else:
            names = list(sequences)
            if not names:
                raise InputError("the sequence list is empty (sequences=[])")
            self.imageset_path = self._find_imageset(required=False)
            if self.imageset_path is not None:
                known = _parse_imageset(self.imageset_path)
                where = self.imageset_path
            else:
                known = sorted(p.name for p in self.image_root.iterdir() if p.is_dir())
                where = self.image_root
            for name in names:
                if name not in known:
                    raise InputError(
                        f"unknown sequence '{name}'{_close_matches(name, known)}", where
                    )
        self._sequences: dict[str, DavisSequence] = {}
        for name in names:
            self._sequences[name] = self._load_sequence(name)

    def _imageset_candidates(self, year: int) -> list[Path]:
        folder = self.root / "ImageSets"
        if year == 2017:
            return [folder / "2017" / f"{self.split}.txt"]
        found = [folder / self.resolution / f"{self.split}.txt"]
        for extra in ("480p", "2016"):
            path = folder / extra / f"{self.split}.txt"
            if path not in found:
                found.append(path)
        return found

    def _find_imageset(self, *, required: bool) -> Path | None:
        for path in self._imageset_candidates(self.year):
            if path.is_file():
                return path
        if not required:
            return None
        expected = self._imageset_candidates(self.year)[0]
        other_year = 2016 if self.year == 2017 else 2017
        others = [p for p in self._imageset_candidates(other_year) if p.is_file()]
        if others:
            rel = others[0].relative_to(self.root)
            raise InputError(
                f"sequence list not found for year {self.year}; found the DAVIS-{other_year} "
                f"style list {rel}: pass year={other_year} (--year {other_year}) if this is a "
                f"DAVIS-{other_year} set",
                expected,
            )
        raise InputError(f"sequence list for split '{self.split}' not found", expected)

    def _load_sequence(self, name: str) -> DavisSequence:
        image_dir = self.image_root / name
        if not image_dir.is_dir():
            raise InputError(f"no frame folder for sequence '{name}'", image_dir)
        frames = sorted(
            p for p in image_dir.iterdir() if p.suffix.lower() in _FRAME_SUFFIXES and p.is_file()
        )
        if not frames:
            raise InputError(f"sequence '{name}' has no frames (*.jpg)", image_dir)
        annotation_dir = self.annotation_root / name
        masks: list[Path | None] = []
        for frame in frames:
            mask = annotation_dir / f"{frame.stem}.png"
            masks.append(mask if mask.is_file() else None)
        if masks[0] is None:
            raise InputError(
                f"the first frame of sequence '{name}' has no annotation",
                annotation_dir / f"{frames[0].stem}.png",
            )
        return DavisSequence(name, frames, masks, year=self.year, annotation_dir=annotation_dir)

    @property
    def sequence_names(self) -> list[str]:
        return list(self._sequences)

    def __len__(self) -> int:
        return len(self._sequences)

    def __iter__(self) -> Iterator[DavisSequence]:
        return iter(self._sequences.values())

    def __getitem__(self, key: str | int) -> DavisSequence:
        if isinstance(key, int):
            return list(self._sequences.values())[key]
        try:
            return self._sequences[key]
        except KeyError:
            raise InputError(
                f"unknown sequence '{key}'{_close_matches(key, self.sequence_names)}"
            ) from None

    def __repr__(self) -> str:
        return (
            f"DavisDataset(root='{self.root}', year={self.year}, split='{self.split}', "
            f"resolution='{self.resolution}', sequences={len(self)})"
        )


def read_result_masks(
    results_dir: str | os.PathLike,
    sequence: DavisSequence,
    frame_indices: Sequence[int] | None = None,
) -> np.ndarray:
    """Read ``<results_dir>/<seq>/<frame>.png`` for a sequence: ``T×H×W`` uint8 ids.

    ``frame_indices`` selects frames (default: all). Files must be single-channel (palette or
    grayscale) PNGs of exactly the frame size; ids are returned as stored.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise InputError("results folder not found", results_dir)
    folder = results_dir / sequence.name
    if not folder.is_dir():
        raise InputError(f"no results for sequence '{sequence.name}'", folder)
    indices = range(sequence.num_frames) if frame_indices is None else frame_indices
    height, width = sequence.size
    out = np.empty((len(indices), height, width), dtype=np.uint8)
    names = sequence.frame_names
    for k, index in enumerate(indices):
        path = folder / f"{names[index]}.png"
        if not path.is_file():
            raise InputError(f"result file missing for sequence '{sequence.name}'", path)
        ids = read_id_png(path)
        if ids.shape != (height, width):
            raise InputError(
                f"result size {ids.shape[1]}x{ids.shape[0]} differs from the ground truth "
                f"{width}x{height}",
                path,
            )
        out[k] = ids
    return out
