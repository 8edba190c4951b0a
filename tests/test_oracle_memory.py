"""The mask oracles' memory: one source's STFT at a time, not all of them with their masks and estimates."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CHILD = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from helpers import make_tracks
    import openunmix_like.evaluate as ev

    track = next(ev.folder_tracks(make_tracks(Path(sys.argv[1]), n=1, seconds=30.0, rate=44100)))
    channels, samples = track.mixture.shape
    stft_bytes = channels * 2049 * (samples // 1024 + 1) * 16  # one complex128 STFT of the mixture
    before = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")  # resident now
    # The peak so far (importing torch, making the track) is not the oracle's: start the peak again from now.
    Path("/proc/self/clear_refs").write_text("5")
    ev.oracle(sys.argv[2], track, list(track.references))
    status = Path("/proc/self/status").read_text().split("VmHWM:")[1]
    peak = int(status.split()[0]) * 1024
    print(json.dumps((peak - before) / stft_bytes))
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads the resident sizes from Linux's /proc")
@pytest.mark.parametrize("method", ["irm2", "ibm1"])
def test_a_mask_oracle_takes_a_few_stfts_of_the_track_whatever_its_sources(tmp_path, method):
    # Three sources: their STFTs, powers, masks and estimates all at once peaked at about 13 mixture STFTs.
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "data"), method, str(Path(__file__).parent)],
                          capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) < 9, done.stdout
