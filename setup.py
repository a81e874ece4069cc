from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="casdap",
    version="0.1.0",
    description="Domain-adaptive prompts (DAP) on the CAS-ViT backbone for class-incremental learning",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The configs stay in the checkout's top-level configs/ (DAP's layout: configs/dap/*.yaml with
    # _BASE_: "../base-dap.yaml" or "../streams/<stream>.yaml") and ship inside the package as
    # casdap/configs/, same layout, so `casdap cl --config-file configs/dap/digits.yaml` and
    # `casdap demo` work from a wheel.
    packages=[*find_packages(include=["casdap", "casdap.*"]), "casdap.configs", "casdap.configs.dap",
              "casdap.configs.streams"],
    package_dir={"casdap.configs": "configs", "casdap.configs.dap": "configs/dap",
                 "casdap.configs.streams": "configs/streams"},
    package_data={"casdap.configs": ["*.yaml"], "casdap.configs.dap": ["*.yaml"], "casdap.configs.streams": ["*.yaml"]},
    install_requires=[
        # 2.6 is the first release where torch.load(weights_only=True) is safe (CVE-2025-32434).
        "torch>=2.6",
        "torchvision>=0.21",
        "timm>=1.0.9",
        "avalanche-lib>=0.6.0",
        "pyyaml>=6.0",
        "yacs>=0.1.8",
        "tensorboard>=2.14",
        "scikit-learn>=1.3",
        "matplotlib>=3.7",
        "tqdm>=4.64",
        "numpy>=1.24",
        # tf.train.Example records of tensorflow-datasets folders (casdap/data/tfrecord.py); tensorboard
        # already brings it
        "protobuf>=3.20",
    ],
    extras_require={
        # ONNX export (casdap export): the torch.export-based exporter needs onnxscript.
        "export": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.18"],
        # the validation search of the factorial table (benchmarks/factorial.py)
        "search": ["optuna>=3.4"],
        # the export tests run the exported graph in onnxruntime, so CI installs it too; pytest-xdist
        # runs the suite on every core (scripts/test.sh), filelock lets its workers share session fixtures;
        # optuna for the factorial table's test
        "test": ["pytest>=7.4", "pytest-xdist>=3.5", "filelock>=3.12", "ruff>=0.5", "onnx>=1.16",
                 "onnxscript>=0.2", "onnxruntime>=1.18", "optuna>=3.4"],
    },
    entry_points={"console_scripts": ["casdap=casdap.cli:main"]},
)
