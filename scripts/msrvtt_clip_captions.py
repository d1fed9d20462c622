"""captions.json for a folder of MSR-VTT mp4 clips: their 20 official captions; official train -> train, test -> validate.

Usage: python scripts/msrvtt_clip_captions.py ../shared/data/msrvtt-annotations VIDEO_FOLDER captions.json
"""
import json, sys, zipfile
from pathlib import Path
ann = Path(sys.argv[1])
ids = sorted(p.stem for p in Path(sys.argv[2]).glob("*.mp4"))
out = {}
for z, member in (("train_val_annotation.zip", "train_val_videodatainfo.json"), ("test_videodatainfo.json.zip", "test_videodatainfo.json")):
    d = json.load(zipfile.ZipFile(ann / z).open(member))
    split = {v["video_id"]: v["split"] for v in d["videos"]}
    for s in d["sentences"]:
        if s["video_id"] in ids:
            e = out.setdefault(s["video_id"], {"split": "train" if split[s["video_id"]] == "train" else "validate", "captions": []})
            e["captions"].append(s["caption"])
Path(sys.argv[3]).write_text(json.dumps(out, indent=1))
print({k: sum(1 for v in out.values() if v["split"] == k) for k in ("train", "validate")}, "videos;", sum(len(v["captions"]) for v in out.values()), "captions")
