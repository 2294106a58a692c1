"""Multi-object annotation without a model (a stub network, so each test takes a second): the automatic-negative
rule, COCO import errors, and `python -m fcfi_jax.annotate`'s folder project: a COCO file saved atomically after
every change, continued by a restart, never replaced by less than it held, and one-line errors for bad input.
(The masks of the real predictor through the same API, and pycocotools' reading of them, are checked in
tests/test_demo_server.py and, in the browser, tests/test_demo_browser.py.)"""
import json
import os

import cv2
import numpy as np
import pytest

from fcfi_jax.annotate import Project, main
from fcfi_jax.demo import DemoApp, DemoError

BOX = 12   # the stub's object: a square of half-side BOX around every positive click, minus the same around negatives


def box_net(x, points, new_points, gate):
    logits = np.full(x.shape[:3] + (1,), -5, np.float32)
    n = points.shape[1] // 2
    for b in range(x.shape[0]):
        for rows, value in ((points[b, :n], 5), (points[b, n:], -5)):
            for y, xx, order in rows:
                if order >= 0:
                    logits[b, max(0, int(y) - BOX):int(y) + BOX, max(0, int(xx) - BOX):int(xx) + BOX] = value
    return {"instances": logits, "updated_feedback1": logits, "updated_feedback2": logits}


def png(h=80, w=120, seed=0):
    return cv2.imencode(".png", np.random.RandomState(seed).randint(0, 255, (h, w, 3), np.uint8))[1].tobytes()


def box(h, w, y, x):
    m = np.zeros((h, w), bool)
    m[max(0, y - BOX):y + BOX, max(0, x - BOX):x + BOX] = True
    return m


def annotate(app, sid, clicks, label):
    for y, x, pos in clicks:
        app.click(sid, y, x, pos)
    return app.finish(sid, label)


def test_auto_negatives_rule_and_undo():
    app = DemoApp(box_net, zoom_in=None, with_flip=False, auto_negatives=True)
    sid = app.open_image(png(), "a.png")["session"]
    annotate(app, sid, [(30, 30, True)], "a")
    # covers 24 of object 1's 576 pixels (a 1-pixel column, 4%): one automatic negative click in its middle
    s = app.click(sid, 30, 53, True)
    assert s["clicks"] == [[30, 53, True], [29, 41, False]] and s["click_auto"] == [False, True], s["clicks"]
    want = box(80, 120, 30, 53) & ~box(80, 120, 29, 41) & ~box(80, 120, 30, 30)   # and no overlap
    assert s["area"] == int(want.sum())
    s = app.click(sid, 31, 54, True)   # object 1 already has its automatic click: no second one
    assert s["click_auto"] == [False, True, False]
    s = app.undo(sid)
    assert s["click_auto"] == [False, True]
    s = app.undo(sid)   # the user's click and the automatic one it caused
    assert s["clicks"] == []
    # below 1% of the object (2 of 576 pixels) or switched off: no automatic click
    s = app.click(sid, 52, 53, True)
    assert s["click_auto"] == [False] and s["area"] == int((box(80, 120, 52, 53) & ~box(80, 120, 30, 30)).sum())
    app.reset(sid)
    app.set_options(sid, auto_negatives=False)
    assert app.click(sid, 30, 53, True)["click_auto"] == [False]


def test_import_errors_leave_the_objects_unchanged(tmp_path):
    app = DemoApp(box_net, zoom_in=None, with_flip=False, labels=["cat", "dog"], labels_source="labels.txt")
    sid = app.open_image(png(), "a.png")["session"]
    s = annotate(app, sid, [(30, 30, True)], "cat")
    good = json.loads(app.export(sid, "coco.json"))
    assert [c["name"] for c in good["categories"]] == ["cat", "dog"]
    with pytest.raises(DemoError, match="unknown label 'bird': the labels allowed are those of labels.txt"):
        app.finish(sid, "bird")
    other = dict(good, images=[dict(good["images"][0], file_name="b.png")])
    bird = dict(good, categories=[{"id": 1, "name": "bird"}])
    small = dict(good, images=[dict(good["images"][0], height=40)])
    broken = dict(good, annotations=[dict(good["annotations"][0], segmentation={"size": [80, 120], "counts": 5})])
    for doc, needle in [(other, "has no image named 'a.png' (it lists 1: b.png)"), (bird, "unknown label 'bird'"),
                        (small, "as 120x40 but the image is 120x80"), (broken, "RLE counts must be a string"),
                        ({"images": "x"}, "'images' must be a list")]:
        with pytest.raises(DemoError) as e:
            app.import_coco(sid, doc)
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
        assert app.state(sid)["objects"] == s["objects"]
    assert app.import_coco(sid, good)["objects"][0]["area"] == s["objects"][0]["area"]


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for k, name in enumerate(["a.png", "b.png", "c.png"]):
        (d / name).write_bytes(png(seed=k))
    (d / "notes.txt").write_text("not an image, not listed")
    return d


def test_folder_saves_after_every_object_and_continues(folder, tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "coco.json"
    app = DemoApp(box_net, zoom_in=None, with_flip=False, project=Project(folder, out))
    assert app.project_info()["images"] == [{"name": n, "objects": 0, "done": False} for n in ("a.png", "b.png", "c.png")]
    with pytest.raises(DemoError, match="choose its images with Previous / Next"):
        app.open_image(png(), "x.png")
    sid = app.open_project_image(1)["session"]
    assert not out.exists()   # nothing to save before the first object
    s = annotate(app, sid, [(30, 30, True)], "cat")
    assert s["save_error"] is None and s["project"] == {"index": 1, "image_done": False, "done": 0, "total": 3}
    first = COCO(str(out))
    assert [im["file_name"] for im in first.loadImgs(first.getImgIds())] == ["b.png"]
    assert np.array_equal(first.annToMask(first.loadAnns(first.getAnnIds())[0]).astype(bool), box(80, 120, 30, 30))
    annotate(app, sid, [(30, 80, True)], "dog")
    s = app.mark_done(sid, True)
    assert s["project"]["done"] == 1
    saved = json.loads(out.read_text())
    assert [a["id"] for a in saved["annotations"]] == [1, 2] and saved["images"][0]["fcfi_done"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco.json", "images"]   # no temporary file left behind

    # a restart (new Project on the same file): image b has its two objects, the first image not done opens first
    app2 = DemoApp(box_net, zoom_in=None, with_flip=False, project=Project(folder, out))
    info = app2.project_info()
    assert info["start"] == 0 and info["done"] == 1 and info["images"][1] == {"name": "b.png", "objects": 2, "done": True}
    sid2 = app2.open_project_image(1)["session"]
    s2 = app2.state(sid2)
    assert [(o["label"], o["area"]) for o in s2["objects"]] == [("cat", 576), ("dog", 576)]
    # deleting on purpose is saved; the annotations of the other images and unknown fields are kept as they were
    doc = json.loads(out.read_text())
    doc["info"]["mine"] = 1
    doc["images"].append({"id": 9, "file_name": "a.png", "height": 80, "width": 120})
    doc["annotations"].append({"id": 7, "image_id": 9, "category_id": 1, "iscrowd": 0, "area": 4,
                               "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]], "bbox": [1, 1, 2, 2]})
    out.write_text(json.dumps(doc))
    app3 = DemoApp(box_net, zoom_in=None, with_flip=False, project=Project(folder, out))
    sid3 = app3.open_project_image(1)["session"]
    app3.delete_object(sid3, app3.state(sid3)["objects"][0]["id"])
    after = json.loads(out.read_text())
    assert after["info"]["mine"] == 1 and [a["id"] for a in after["annotations"]] == [7, 2]
    assert after["annotations"][0]["segmentation"] == [[1, 1, 3, 1, 3, 3, 1, 3]]


def test_failed_or_conflicting_writes_never_lose_the_file(folder, tmp_path, monkeypatch):
    out = tmp_path / "coco.json"
    app = DemoApp(box_net, zoom_in=None, with_flip=False, project=Project(folder, out))
    sid = app.open_project_image(0)["session"]
    annotate(app, sid, [(30, 30, True)], "cat")
    before = out.read_bytes()

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    s = annotate(app, sid, [(30, 80, True)], "dog")
    assert "could not save" in s["save_error"] and "No space left on device" in s["save_error"]
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["coco.json", "images"]
    monkeypatch.undo()
    s = app.update_object(sid, s["objects"][0]["id"], "tiger")   # the next change saves everything
    assert s["save_error"] is None and len(json.loads(out.read_text())["annotations"]) == 2

    out.write_text(out.read_text().replace('"tiger"', '"lion"'))   # another program edits the file
    edited = out.read_bytes()
    s = app.delete_object(sid, s["objects"][0]["id"])
    assert "changed on disk since this server loaded it" in s["save_error"] and out.read_bytes() == edited


def _cli(capsys, *args):
    code = main([*map(str, args)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("fcfi_jax.annotate: error: "), err
    return err


def test_cli_bad_input_is_one_line_and_leaves_the_file(folder, tmp_path, capsys):
    ckpt = tmp_path / "c.pth"
    ckpt.write_bytes(b"x")   # checked after the arguments and the folder, so never loaded here
    out = tmp_path / "coco.json"
    base = ["--checkpoint", ckpt, "--images", folder, "--output", out]
    assert "--images DIR is required" in _cli(capsys, "--checkpoint", ckpt, "--output", out)
    assert "--output FILE is required" in _cli(capsys, "--checkpoint", ckpt, "--images", folder)
    assert "no such folder" in _cli(capsys, *base[:3], tmp_path / "nope", *base[4:])
    assert "holds no PNG, JPEG or BMP image" in _cli(capsys, *base[:3], tmp_path, *base[4:])
    for text, needle in [('{"images": [', "is not valid JSON"),
                         ('{"images": 3}', "'images' must be a list"),
                         ('{"images": [{"id": 1, "file_name": "z.png"}], "annotations": [], "categories": []}',
                          "is for other images (it lists z.png")]:
        out.write_text(text)
        err = _cli(capsys, *base)
        assert needle in err and ("left untouched" in err or "pass the folder it was written for" in err), err
        assert out.read_text() == text
    out.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "bird"}],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": []}]}))
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    assert "unknown label 'bird'" in _cli(capsys, *base, "--labels", labels)
    labels.write_text("cat\ncat\n")
    assert "line 2: the label 'cat' is listed twice" in _cli(capsys, *base, "--labels", labels)


def test_unreadable_image_in_the_folder_is_one_line(folder, tmp_path):
    (folder / "b.png").write_bytes(b"garbage")
    app = DemoApp(box_net, zoom_in=None, with_flip=False, project=Project(folder, tmp_path / "coco.json"))
    with pytest.raises(DemoError) as e:
        app.open_project_image(1)
    assert str(e.value).startswith("b.png: not a PNG, JPEG or BMP image") and "go to the next image" in str(e.value)
    assert app.open_project_image(2)["name"] == "c.png"   # the others still open


def test_project_matches_images_as_find_image_does(tmp_path):
    """Starting on a COCO file with many images: each folder file gets the entry `find_image` picks (the exact name
    first, else the only entry with that base name; none for an ambiguous base name), and the entries naming no
    folder file are the missing ones."""
    from fcfi_jax.demo.objects import CocoError, find_image

    folder = tmp_path / "images"
    folder.mkdir()
    names = ["exact.png", "sub.png", "twice.png", "absent.png"] + [f"f{k:05d}.png" for k in range(3000)]
    for name in names:
        (folder / name).write_bytes(b"")   # only the names matter here
    images = ([{"id": 1, "file_name": "exact.png"}, {"id": 2, "file_name": "old/exact.png"},
               {"id": 3, "file_name": "dir\\sub.png"}, {"id": 4, "file_name": "a/twice.png"},
               {"id": 5, "file_name": "b/twice.png"}, {"id": 6, "file_name": "gone.png"}]
              + [{"id": 10 + k, "file_name": f"f{k:05d}.png"} for k in range(3000)])
    out = tmp_path / "coco.json"
    out.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    project = Project(folder, out)
    for name in names:
        try:
            want = find_image(project.doc, name, str(out))["id"]
        except CocoError:
            want = None
        assert (project.entries[name]["id"] if name in project.entries else None) == want, name
    assert [project.entries[n]["id"] for n in ("exact.png", "sub.png")] == [1, 3]
    assert "twice.png" not in project.entries and "absent.png" not in project.entries
    assert project.missing == ["old/exact.png", "a/twice.png", "b/twice.png", "gone.png"]
