import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(r'^__version__ = "([^"]+)"', (here / "openunmix_like" / "__init__.py").read_text(), re.M).group(1)

setup(
    name="openunmix-like",
    version=version,
    description="Open-Unmix-compatible music source separation: fast, flat-memory inference and training",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["openunmix_like", "openunmix_like.*"]),
    package_data={"openunmix_like": ["py.typed", "pretrained.json", "models/*/*", "web/static/*"]},
    install_requires=[
        # The lowest releases the tests pass with. torch 2.3 is the first with torch.amp.GradScaler (training on
        # CUDA); 2.1 also fails CPU training and, built for numpy 1, every numpy 2. numpy 1.23.2 and scipy 1.9.2
        # are the first with Python 3.11 wheels.
        "torch>=2.3",
        "numpy>=1.23.2",
        "scipy>=1.9.2",
        "soundfile>=0.12",
        "safetensors>=0.4",
        "tqdm>=4.60",
    ],
    extras_require={
        "tests": ["pytest>=7", "norbert>=0.2.1", "hypothesis>=6", "musdb>=0.4.0", "stempeg>=0.2.3",
                  "tensorboard>=2.10", "museval>=0.4", "matplotlib>=3.5",
                  "pyworld>=0.3.4", "setuptools>=70.1,<81", "onnx>=1.15", "onnxruntime>=1.17",
                  "onnxscript>=0.6",
                  "ray>=2.9", "fsspec>=2023.3", "s3fs>=2023.3", "pyarrow>=12", "grpcio>=1.49.1", "moto[server]>=5",
                  "fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9", "httpx>=0.27",
                  "httpx2>=2; python_version>='3.11'", "playwright>=1.40",
                  "pyyaml>=5", "scikit-learn>=1.0", "mypy>=2.4",
                  "psutil>=5"],
        # httpx2: what Starlette's TestClient runs on from Starlette 1.x (with httpx it warns that this is
        # deprecated); the tests' own clients of a live umx-web still use httpx. httpx2 needs Python 3.11.
        # onnxscript: torch 2.13's torch.export-based ONNX exporter; 0.6 is the first with the API it imports.
        "export": ["onnx>=1.15", "onnxruntime>=1.17", "onnxscript>=0.6"],
        # umx-evaluate: museval's windows and record format (it brings musdb too); matplotlib: sdr-boxplot.png.
        "evaluate": ["museval>=0.4", "matplotlib>=3.6"],
        # umx-web: the local web app (FastAPI on uvicorn; python-multipart reads uploads).
        "web": ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9"],
        "musdb": ["musdb>=0.4.0", "stempeg>=0.2.3"],
        # --dataset slakh: Slakh2100's metadata.yaml files.
        "slakh": ["pyyaml>=5"],
        # --dataset medleydb: MedleyDB's <TrackName>_METADATA.yaml files.
        "medleydb": ["pyyaml>=5"],
        # umx-separate --engine ray: Ray core (tasks and actors; Ray Data is not used), fsspec/s3fs for
        # s3:// and other URLs (s3fs 2023.3 is the first to take endpoint_url), pyarrow for Parquet manifests,
        # grpcio to ask a head node whether it requires a token before Ray connects.
        "ray": ["ray>=2.9", "fsspec>=2023.3", "s3fs>=2023.3", "pyarrow>=12", "grpcio>=1.49.1"],
        # pyworld re-pitches speech into song; its __init__ still imports pkg_resources.
        "synth": ["pyworld>=0.3.4", "setuptools<81"],
    },
    entry_points={
        "console_scripts": [
            "umx-separate=openunmix_like.cli:umx_separate",
            "umx-train=openunmix_like.cli:umx_train",
            "umx-evaluate=openunmix_like.cli:umx_evaluate",
            "umx-synth=openunmix_like.cli:umx_synth",
            "umx-export=openunmix_like.cli:umx_export",
            "umx-compare=openunmix_like.cli:umx_compare",
            "umx-web=openunmix_like.cli:umx_web",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Multimedia :: Sound/Audio :: Analysis",
        "License :: OSI Approved :: MIT License",
    ],
)
