"""InputReader (CPU): reads each row's input images and mask once, checks them and hashes them into the row."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from imagefleet.actors.cells import column_values
from imagefleet.actors.inputs import InputFiles, InputProblem, Roots, check_image, sha256_of, uris_of
from imagefleet.configs.generator_base import MASK_TASKS
from imagefleet.configs.prep import InputReaderConfig

if TYPE_CHECKING:
    import pyarrow as pa

INPUT_OUTPUT_COLUMNS = {
    "input_images": "JSON list of the row's input image URIs, resolved ('' = none)",
    "input_sha256": "content hashes of the input images, comma-separated in order ('' = none)",
    "mask_uri": "the row's mask URI, resolved ('' = none)",
    "mask_sha256": "content hash of the mask ('' = none)",
    "input_error": "why the row's inputs can't be used ('' when fine)",
}


class InputReader:
    """Adds to each prompt row the resolved URIs and content hashes of its input images and mask, or the reason
    they can't be used (a file outside the table's folder and `source.allowed_roots`; a missing, unreadable,
    oversized or wrong-mode file; a mask whose size differs from its image). Runs before the preprocessor, once
    per table row (not per expanded image), in a CPU pool.

    Args:
        cfg: this stage's slice (columns, base folder, store, limits).
    """

    INPUT_COLUMNS = {"<image column>": "input image URI(s) per row", "<mask column>": "mask URI (optional)"}
    OUTPUT_COLUMNS = INPUT_OUTPUT_COLUMNS

    def __init__(self, cfg: InputReaderConfig) -> None:
        self.cfg = cfg
        # only files under the table's folder and the allowed roots are read (symlinks resolved first)
        roots = Roots([cfg.base_uri, *cfg.allowed_roots])
        self.files = InputFiles(cfg.store, cfg.limits.max_image_bytes, roots)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        # 1 the two columns as Python values (a missing mask column is all nulls)
        n = batch.num_rows
        images = column_values(batch.column(self.cfg.image_column))
        with_mask = self.cfg.mask_column in batch.column_names and self.cfg.task in MASK_TASKS
        masks = column_values(batch.column(self.cfg.mask_column)) if with_mask else [None] * n
        # 2 read, check and hash each row's files
        out: dict[str, list[str]] = {name: [] for name in INPUT_OUTPUT_COLUMNS}
        for image_cell, mask_cell in zip(images, masks, strict=True):
            for name, value in self._row(image_cell, mask_cell).items():
                out[name].append(value)
        # 3 the table plus the new columns (a rerun of this stage replaces them)
        for name, values in out.items():
            if name in batch.column_names:
                batch = batch.drop_columns([name])
            batch = batch.append_column(name, pa.array(values, type=pa.string()))
        return batch

    def _row(self, image_cell: Any, mask_cell: Any) -> dict[str, str]:
        empty = dict.fromkeys(INPUT_OUTPUT_COLUMNS, "")
        try:
            uris = uris_of(image_cell, self.cfg.base_uri)
            if not uris:
                raise InputProblem(f"no input image (source.task={self.cfg.task} needs one per row in column "
                                   f"{self.cfg.image_column!r})")
            hashes, sizes = [], []
            for uri in uris:
                data = self.files.read(uri)
                sizes.append(check_image(uri, data, self.cfg.limits.max_image_pixels))
                hashes.append(sha256_of(data))
            mask_uri, mask_hash = "", ""
            masks = uris_of(mask_cell, self.cfg.base_uri)
            if len(masks) > 1:
                raise InputProblem(f"{len(masks)} masks given; a row takes one")
            if masks:
                mask_uri = masks[0]
                data = self.files.read(mask_uri)
                size = check_image(mask_uri, data, self.cfg.limits.max_image_pixels, mask=True)
                if size != sizes[0]:
                    raise InputProblem(f"mask {mask_uri} is {size[0]}x{size[1]} but its image {uris[0]} is "
                                       f"{sizes[0][0]}x{sizes[0][1]}; they must match")
                mask_hash = sha256_of(data)
            elif self.cfg.task == "inpaint":
                raise InputProblem("no mask (source.task=inpaint needs one per row)")
        except InputProblem as exc:
            return {**empty, "input_error": str(exc)[:500]}
        return {**empty, "input_images": json.dumps(uris), "input_sha256": ",".join(hashes), "mask_uri": mask_uri,
                "mask_sha256": mask_hash}
