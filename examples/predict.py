"""Run a bundle from Python on a few images and a short clip.

    python examples/predict.py demo-out/bundle.safetensors demo-out/data
"""

import sys
from pathlib import Path

import torch

import mtlcompress
from mtlcompress.data.layouts import list_video_clips, open_clip, open_dataset
from mtlcompress.tasks.registry import get_task

bundle_path, data = Path(sys.argv[1]), Path(sys.argv[2])
model = mtlcompress.load(bundle_path)                 # verified bundle + one shared engine
size = model.bundle.backbone.img_size

images = torch.stack([open_dataset(data, "val", tasks=[], size=size)[i]["image"] for i in range(4)])
outputs = model.predict(images)                       # {task: raw map [B, C, H, W]}
for task, raw in outputs.items():
    prediction = get_task(task).predict(raw)          # labels, metres, unit normals or probabilities
    print(f"{task:9s} raw {tuple(raw.shape)} -> prediction {tuple(prediction.shape)}")

clip = open_clip(list_video_clips(data)[0], tasks=[], size=size)
frames = [clip[i]["image"].unsqueeze(0) for i in range(len(clip))]
for result in model.stream(frames, keyframe_every=8):
    print(f"frame {result.index:2d} keyframe={result.keyframe} drift={result.drift:.3f}")
