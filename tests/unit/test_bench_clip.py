"""The load generator's camera is layered as a browser's L1T3 (bench/clip.py): the layers it
claims in each RTP descriptor must be true, or the benchmark would measure a server that
decodes garbage."""

from __future__ import annotations

import av
import numpy as np

from bench.clip import LAYER_PATTERN, make_clip


def test_clip_layers_are_what_the_descriptors_claim() -> None:
    clip = make_clip(2)
    layers = clip.video_layers
    assert len(clip.video) % len(LAYER_PATTERN) == 0  # the loop keeps the pattern
    assert clip.video[0][1] and layers[0] == 0
    assert sorted(set(layers)) == [0, 1, 2]

    full = av.CodecContext.create("vp8", "r")
    base = av.CodecContext.create("vp8", "r")
    referenced = av.CodecContext.create("vp8", "r")
    referenced.skip_frame = "NONREF"
    # Twice round the loop: the wrap to the keyframe must keep the layers too.
    for (data, _), layer in zip(clip.video * 2, layers * 2, strict=True):
        picture = next(iter(full.decode(av.Packet(data)))).to_ndarray(format="yuv420p")
        # The top layer updates no reference buffer; the lower ones do.
        assert len(referenced.decode(av.Packet(data))) == (0 if layer == 2 else 1)
        if layer == 0:
            # The base layer alone decodes to exactly the same pictures.
            alone = next(iter(base.decode(av.Packet(data)))).to_ndarray(format="yuv420p")
            assert np.array_equal(alone, picture)
