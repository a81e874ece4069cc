"""Reading a TFDS-prepared folder (casdap/data/tfds.py) against image folders, on the same JPEGs.

Writes ``--images`` images of ``--size`` px as JPEG, once as tensorflow-datasets' imagenet_r layout
(the ``test`` split in shards) and once as class folders, then measures each reader in a fresh
process: the start-up pass (TFDS: every record's CRCs and label; folders: listing the files), the
images/s of reading and decoding ``--sample`` images in a seeded random order (as training draws
them), and the process's peak RSS. Every count given in ``--images`` is measured, so running two
sizes shows whether memory grows with the data. The generated data is deleted unless ``--keep``.

    python benchmarks/tfds_reading.py --images 7500 30000 --out /tmp/tfds_bench
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def _jpeg(rng: np.random.Generator, label: int, size: int) -> bytes:
    from PIL import Image

    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    coarse[..., label % 3] = (37 * label) % 256
    img = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
    noisy = np.clip(np.asarray(img, dtype=np.int16) + rng.integers(-20, 20, (size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(noisy.astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def generate(out: Path, count: int, size: int, shards: int) -> tuple[Path, Path]:
    """Both layouts of the same ``count`` images (200 classes, ImageNet-R's ImageNet ids)."""
    from tfds_layout import write_tfds

    from casdap.data.imagenet_r_labels import IMAGENET_R_IDS
    from casdap.data.tfrecord import frame_record

    tfds_root, folders = out / f"tfds_{count}", out / f"folders_{count}"
    if (tfds_root / "complete").is_file():  # written in full by an earlier --keep run
        return tfds_root, folders
    shutil.rmtree(tfds_root, ignore_errors=True)
    shutil.rmtree(folders, ignore_errors=True)
    labels = [IMAGENET_R_IDS[i % 200] for i in range(count)]
    folder = write_tfds(tfds_root, "imagenet_r", {"test": []}, num_classes=1000)  # info files; shards below
    for empty in folder.glob("imagenet_r-test.tfrecord-*"):
        empty.unlink()
    rng = np.random.default_rng(0)
    bounds = np.linspace(0, count, shards + 1).astype(int)
    from tfds_layout import serialize

    for s in range(shards):
        with open(folder / f"imagenet_r-test.tfrecord-{s:05d}-of-{shards:05d}", "wb") as f:
            for i in range(bounds[s], bounds[s + 1]):
                data = _jpeg(rng, labels[i], size)
                f.write(frame_record(serialize(data, labels[i])))
                target = folders / f"n{labels[i]:08d}"
                target.mkdir(parents=True, exist_ok=True)
                (target / f"{i:06d}.jpg").write_bytes(data)
    info = json.loads((folder / "dataset_info.json").read_text())
    info["splits"] = [{"name": "test", "numBytes": "0", "shardLengths": [str(bounds[s + 1] - bounds[s])
                                                                          for s in range(shards)]}]
    (folder / "dataset_info.json").write_text(json.dumps(info))
    (tfds_root / "complete").touch()
    return tfds_root, folders


def measure(kind: str, root: Path, sample: int) -> dict:
    """One reader in this process: start-up pass, random-order reads, peak RSS."""
    import torch  # noqa: F401  (both readers run inside a process with what a run imports)
    import torchvision.datasets  # noqa: F401

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if kind == "tfds":
        from casdap.data.tfds import TFDSSplit, find_version, read_info

        data = TFDSSplit(read_info(find_version(root, "imagenet_r")), "test")
        read = data.__getitem__
    else:
        from torchvision.datasets import ImageFolder

        data = ImageFolder(str(root))
        read = lambda i: data[i][0]  # noqa: E731
    start = time.perf_counter() - t0
    order = np.random.default_rng(0).permutation(len(data))[:sample]
    t0 = time.perf_counter()
    for i in order:
        read(int(i)).load()
    took = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "images": len(data), "start_s": round(start, 2), "images_per_s": round(len(order) / took, 1),
            "rss_after_imports_mb": round(base_rss), "peak_rss_mb": round(peak)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, nargs="+", default=[7500, 30000])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--sample", type=int, default=3000, help="images read in random order per measurement")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs of each reader; the best is kept")
    p.add_argument("--out", type=Path, default=Path("/tmp/tfds_bench"))
    p.add_argument("--keep", action="store_true")
    p.add_argument("--same-process", action="store_true",
                   help="measure in this process (quick checks: RSS is then not each reader's own)")
    p.add_argument("--measure", nargs=2, metavar=("KIND", "ROOT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]), args.sample)))
        return
    rows = []
    try:
        for count in args.images:
            t0 = time.perf_counter()
            tfds_root, folders = generate(args.out, count, args.size, shards=max(1, count // 2000))
            mb = sum(f.stat().st_size for f in tfds_root.rglob("*.tfrecord-*")) / 2**20
            print(f"{count} images ({mb:.0f} MiB of records) written in {time.perf_counter() - t0:.0f} s", flush=True)
            best: dict[str, dict] = {}
            for _ in range(args.repeats):
                for kind, root in (("tfds", tfds_root), ("folder", folders)):
                    if args.same_process:
                        r = measure(kind, root, args.sample)
                    else:
                        r = json.loads(subprocess.run(
                            [sys.executable, __file__, "--sample", str(args.sample), "--measure", kind, str(root)],
                            check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                    if kind not in best or r["images_per_s"] > best[kind]["images_per_s"]:
                        best[kind] = r
                    print(json.dumps(r), flush=True)
            rows += best.values()
    finally:
        if not args.keep:
            shutil.rmtree(args.out, ignore_errors=True)
    print("\n| reader | images | start-up pass (s) | images/s (random order, decoded) | RSS after imports (MiB) "
          "| peak RSS (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['images']} | {r['start_s']} | {r['images_per_s']} | {r['rss_after_imports_mb']} | "
              f"{r['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
