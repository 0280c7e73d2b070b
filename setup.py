from setuptools import find_packages, setup

setup(
    name="densessl",
    version="0.1.0",
    description="Self-supervised learning for video and dense prediction: correspondence, "
    "label propagation, motion segmentation, with DAVIS evaluation.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["densessl", "densessl.*"]),
    package_data={"densessl.ops": ["csrc/*.cpp", "csrc/*.cu", "csrc/*.h"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "kornia>=0.8.2",
        "timm>=1.0",
        "opencv-python-headless>=4.8",
        "decord>=0.6; platform_machine == 'x86_64' and python_version < '3.13'",
        "numpy>=1.24",
        "scipy>=1.10",
        "pillow>=10",
        "pyyaml>=6",
        "tqdm>=4.60",
        "safetensors>=0.4",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3", "tensorboard>=2.14"],
        "tensorboard": ["tensorboard>=2.14"],
        "crf": ["pydensecrf2"],
    },
    entry_points={"console_scripts": ["densessl=densessl.cli:main"]},
)
