"""Annotate a folder of images in the browser; every change is saved to one COCO file.

    python -m fcfi_jax.annotate --checkpoint CKPT --images DIR --output coco.json [--labels FILE]

Serves the demo page (fcfi_jax/demo) over the images of DIR (PNG/JPEG/BMP, sorted by name, not recursive) with
Previous / Next and the progress ("12/50 done"). The COCO file is rewritten after every finished object, rename,
delete, undo, import and done mark, atomically (temporary file beside it, then os.replace), so stopping the
browser or the server loses at most the object being annotated. Running the command again with the same
--output continues: it loads the file, opens the first image not marked done, and keeps everything the file
holds (other images, their annotations, extra fields) when it writes it back.

The file is never silently replaced by less than it held: an unreadable or corrupt --output, one written for
another folder, one using labels missing from --labels, or one changed on disk by another program while the
server runs, is refused with one line naming the problem and the fix, and left untouched.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile
import threading
from collections import Counter

from fcfi_jax.demo.objects import (
    CocoError,
    annotation,
    atomic_write_json,
    check_coco,
    clean_label,
    image_lookup,
    objects_from_coco,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DONE_KEY = "fcfi_done"   # extra field of a COCO image entry: the annotator marked the image done


class Project:
    """An image folder and the COCO file its annotations go to (loaded when it exists)."""

    def __init__(self, images_dir, output, labels=None, labels_source="--labels"):
        self.images_dir, self.output = pathlib.Path(images_dir), pathlib.Path(output)
        if not self.images_dir.is_dir():
            raise CocoError(f"--images {images_dir}: no such folder")
        self.files = sorted(p.name for p in self.images_dir.iterdir()
                            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise CocoError(f"--images {images_dir} holds no PNG, JPEG or BMP image")
        if self.output.is_dir() or not self.output.parent.is_dir():
            raise CocoError(f"--output {output} must be a file in an existing folder")
        self.labels, self._lock = labels, threading.Lock()
        self.doc = self._load() if self.output.exists() else {
            "info": {"description": "written by fcfi_jax.annotate (FCFI interactive segmentation)"},
            "images": [], "annotations": [], "categories": []}
        self.entries = {}   # folder file name -> its COCO image entry (a dict inside self.doc)
        lookup = image_lookup(self.doc)   # one index: a scan of all entries per file is quadratic
        for name in self.files:
            img = lookup(name)
            if img is not None:
                self.entries[name] = img
        listed = [img["file_name"] for img in self.doc["images"]]
        have = {e["file_name"] for e in self.entries.values()}
        self.missing = [n for n in listed if n not in have]
        if listed and not self.entries:
            raise CocoError(f"{self.output} is for other images (it lists {', '.join(listed[:3])}"
                            f"{' ...' if len(listed) > 3 else ''}, none of them in {images_dir}); pass the folder it "
                            "was written for, or another --output")
        names = {c["id"]: c["name"] for c in self.doc["categories"]}
        for ann in self.doc["annotations"]:
            if ann["category_id"] not in names:
                raise CocoError(f"{self.output}: annotation {ann.get('id', '?')} has category_id {ann['category_id']}, "
                                "which its categories do not list; fix the file or pass another --output")
            if labels is not None:
                clean_label(names[ann["category_id"]], labels, labels_source)
        for label in labels or ():
            self._category_id(label)
        self._check_writable()
        self._stamp = self._file_stamp()

    def _load(self) -> dict:
        where = f"{self.output} was left untouched: fix it, or pass another --output"
        try:
            doc = json.loads(self.output.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise CocoError(f"cannot read {self.output}: {getattr(e, 'strerror', None) or e}; {where}") from None
        except ValueError as e:
            raise CocoError(f"{self.output} is not valid JSON ({str(e)[:80]}); {where}") from None
        try:
            check_coco(doc, str(self.output))
        except CocoError as e:
            raise CocoError(f"{e}; {where}") from None
        for key in ("images", "annotations", "categories"):
            doc.setdefault(key, [])
        return doc

    def _check_writable(self):
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.output.name}.", suffix=".probe", dir=self.output.parent)
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise CocoError(f"cannot write in {self.output.parent} ({e.strerror}): choose an --output in a folder "
                            "you can write to") from None

    def _file_stamp(self):
        try:
            st = self.output.stat()
            return st.st_mtime_ns, st.st_size
        except FileNotFoundError:
            return None

    def _category_id(self, label: str) -> int:
        for cat in self.doc["categories"]:
            if cat["name"] == label:
                return cat["id"]
        cid = max((c["id"] for c in self.doc["categories"]), default=0) + 1
        self.doc["categories"].append({"id": cid, "name": label, "supercategory": ""})
        return cid

    # ---- what the server asks ---------------------------------------------------------------

    def progress(self) -> dict:
        done = sum(1 for n in self.files if n in self.entries and self.entries[n].get(DONE_KEY))
        return {"done": done, "total": len(self.files)}

    def listing(self) -> dict:
        with self._lock:
            counts = Counter(a["image_id"] for a in self.doc["annotations"])
            images = [{"name": n, "objects": counts[self.entries[n]["id"]] if n in self.entries else 0,
                       "done": bool(self.entries.get(n, {}).get(DONE_KEY))} for n in self.files]
            todo = [k for k, im in enumerate(images) if not im["done"]]
            return {"images": images, "output": str(self.output), "start": todo[0] if todo else 0, **self.progress()}

    def read(self, index: int, limit: int) -> bytes:
        """The image file's bytes, at most limit + 1 of them (the server reports a larger file as too large)."""
        with open(self.images_dir / self.files[index], "rb") as f:
            return f.read(limit + 1)

    def load(self, index: int, h: int, w: int, labels=None):
        """(objects, done) the COCO file holds for image `index`."""
        with self._lock:
            entry = self.entries.get(self.files[index])
            if entry is None:
                return [], False
            return objects_from_coco(self.doc, entry, h, w, str(self.output), labels), bool(entry.get(DONE_KEY))

    def save(self, index: int, h: int, w: int, objects, done: bool):
        """Replace image `index`'s annotations by `objects` and rewrite the COCO file atomically."""
        name = self.files[index]
        with self._lock:
            if self._file_stamp() != self._stamp:
                raise CocoError("it changed on disk since this server loaded it (another program, or a second "
                                "annotate server?); nothing was overwritten: restart the server to continue from it")
            entry = self.entries.get(name)
            if entry is None:
                if not objects and not done:
                    return
                entry = {"id": max((im["id"] for im in self.doc["images"]), default=0) + 1, "file_name": name}
                self.doc["images"].append(entry)
                self.entries[name] = entry
            entry["height"], entry["width"] = h, w
            if done:
                entry[DONE_KEY] = True
            else:
                entry.pop(DONE_KEY, None)
            anns = self.doc["annotations"]
            own = [a for a in anns if a["image_id"] == entry["id"]]
            # annotation ids: an object loaded from the file keeps its id; new ones take this image's freed ids
            # first (so saving the same objects again keeps their ids), then fresh ones
            kept = {o.extra.get("id") for o in objects if isinstance(o.extra.get("id"), int)} & {a.get("id") for a in own}
            free = [a["id"] for a in own if isinstance(a.get("id"), int) and a["id"] not in kept]
            next_id = max((a["id"] for a in anns if isinstance(a.get("id"), int)), default=0) + 1
            new = []
            for obj in objects:
                ann_id = obj.extra.get("id") if obj.extra.get("id") in kept else None
                if ann_id is None:
                    ann_id = free.pop(0) if free else next_id
                    next_id += ann_id == next_id
                new.append(annotation(obj, h, w, ann_id, entry["id"], self._category_id(obj.label)))
            self.doc["annotations"] = [a for a in anns if a["image_id"] != entry["id"]] + new
            atomic_write_json(self.output, self.doc)
            self._stamp = self._file_stamp()


def main(argv=None) -> int:
    """CLI: the demo's options plus --images and --output; startup problems are one line and exit code 2."""
    from fcfi_jax.demo.server import build_parser, check_args, serve

    p = build_parser("fcfi_jax.annotate", "Annotate a folder of images in the browser; saves a COCO file.")
    p.add_argument("--images", metavar="DIR", help="folder of PNG/JPEG/BMP images to annotate (required)")
    p.add_argument("--output", metavar="FILE", help="COCO JSON to write; an existing one is continued (required)")
    args = p.parse_args(argv)

    def fail(msg):
        print(f"{p.prog}: error: {msg}", file=sys.stderr)
        return 2

    if not args.images:
        return fail("--images DIR is required: the folder of images to annotate")
    if not args.output:
        return fail("--output FILE is required: the COCO file to write (an existing one is continued)")
    problem = check_args(args)
    if problem:
        return fail(problem)
    try:
        project = Project(args.images, args.output, args.label_list, args.labels or "--labels")
    except CocoError as e:
        return fail(e)
    if project.missing:
        print(f"{p.prog}: note: {args.output} also lists {len(project.missing)} image(s) not in {args.images} "
              f"({', '.join(project.missing[:3])}); they are kept in it unchanged", file=sys.stderr)
    prog = project.progress()
    print(f"{prog['total']} images in {args.images}, {prog['done']} done; saving to {args.output}", flush=True)
    return serve(args, fail, project, what="FCFI annotation")


if __name__ == "__main__":
    sys.exit(main())
