"""Video files: probing them, and stitching shots into one sequence, with the ffmpeg binary
the ``imageio-ffmpeg`` wheel ships (no system ffmpeg needed). CPU work: call through
``bot.cpu.run``.

A sequence is the shots one after the other, each scaled (and padded, never cropped) to the
first shot's frame at :data:`FPS`, optionally cross-faded; its length is the sum of the shots'
less one crossfade per join. Sound is left out of the stitch: shots from different models and
lengths rarely carry sound that joins cleanly (each shot keeps its own).
"""

from __future__ import annotations

import logging
import re
import subprocess
import tempfile
from pathlib import Path

import imageio_ffmpeg
from PIL import Image

from bot.providers import PermanentError

log = logging.getLogger(__name__)

#: Frame rate of a stitched sequence.
FPS = 24
_STREAM = re.compile(r"Video: (\w+).*?, (\d{2,5})x(\d{2,5})")
_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")


def _ffmpeg(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def probe(path: Path) -> tuple[int, int, float]:
    """``(width, height, seconds)`` of a video file.

    Raises:
        PermanentError: not a decodable video.
    """
    found = _ffmpeg("-i", str(path), timeout=30).stderr
    stream, duration = _STREAM.search(found), _DURATION.search(found)
    if stream is None or duration is None:
        raise PermanentError("not a readable video")
    hours, minutes, seconds = duration.groups()
    total = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return int(stream.group(2)), int(stream.group(3)), total


def first_frame(video: Path) -> Image.Image:
    """The first frame of a video, RGB (a video's drift is its first frame's).

    Raises:
        PermanentError: not a readable video.
    """
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "frame.png"
        done = _ffmpeg("-v", "error", "-i", str(video), "-frames:v", "1", str(target), timeout=60)
        if done.returncode != 0 or not target.exists():
            raise PermanentError("not a readable video")
        with Image.open(target) as frame:
            return frame.convert("RGB")


def video_info(data: bytes) -> tuple[int, int, float]:
    """:func:`probe` of a video's bytes."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "probe"
        path.write_bytes(data)
        return probe(path)


def stitch(shots: list[Path], crossfade_s: float = 0.0) -> bytes:
    """The shots as one MP4 (H.264, yuv420p, :data:`FPS`), in the order given.

    Args:
        shots: the shot files, in order; at least one.
        crossfade_s: each join cross-fades over this long (0: a cut).

    Raises:
        PermanentError: a shot is not a readable video, or ffmpeg failed.
    """
    if not shots:
        raise PermanentError("a sequence needs at least one shot")
    infos = [probe(shot) for shot in shots]  # one ffmpeg run each
    width, height, _ = infos[0]
    lengths = [seconds for _, _, seconds in infos]
    fade = max(0.0, min(crossfade_s, *(length / 2 for length in lengths)))
    inputs: list[str] = []
    chains: list[str] = []
    for index, shot in enumerate(shots):
        inputs += ["-i", str(shot)]
        chains.append(
            f"[{index}:v]scale={width}:{height}:force_original_aspect_ratio=decrease,"
            f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2,setsar=1,fps={FPS},format=yuv420p,"
            f"settb=AVTB[v{index}]"
        )
    if len(shots) == 1:
        last = "v0"
    elif fade > 0:
        offset, last = 0.0, "v0"
        for index in range(1, len(shots)):
            offset += lengths[index - 1] - fade
            out = f"x{index}"
            chains.append(
                f"[{last}][v{index}]xfade=transition=fade:duration={fade:.3f}:"
                f"offset={offset:.3f}[{out}]"
            )
            last = out
    else:
        joined = "".join(f"[v{index}]" for index in range(len(shots)))
        chains.append(f"{joined}concat=n={len(shots)}:v=1:a=0[joined]")
        last = "joined"
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "sequence.mp4"
        done = _ffmpeg(
            *("-v", "error", *inputs),
            *("-filter_complex", ";".join(chains), "-map", f"[{last}]", "-an"),
            *("-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-movflags", "+faststart"),
            str(target),
        )
        if done.returncode != 0 or not target.exists():
            log.warning("ffmpeg could not stitch %d shots: %s", len(shots), done.stderr[-500:])
            raise PermanentError("the shots could not be stitched into one video")
        return target.read_bytes()
