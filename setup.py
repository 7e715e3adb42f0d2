"""Installer for ortho_nnd, a self-configuring diffusion pipeline for musculoskeletal MRI."""
import glob

from setuptools import find_packages, setup

CONSOLE_SCRIPTS = [
    "ortho_plan_and_preprocess=ortho_nnd.cli.plan_and_preprocess:main_plan_and_preprocess",
    "ortho_extract_fingerprint=ortho_nnd.cli.plan_and_preprocess:main_extract_fingerprint",
    "ortho_plan_experiment=ortho_nnd.cli.plan_and_preprocess:main_plan_experiment",
    "ortho_preprocess=ortho_nnd.cli.plan_and_preprocess:main_preprocess",
    "ortho_make_demo_dataset=ortho_nnd.cli.make_demo_dataset:main",
    "ortho_synthesize_from_labels=ortho_nnd.cli.synthesize_from_labels:main",
    "ortho_train=ortho_nnd.cli.train:main",
    "ortho_predict=ortho_nnd.cli.predict:main",
    "ortho_evaluate=ortho_nnd.cli.evaluate:main",
    "ortho_summarize=ortho_nnd.cli.summarize:main",
    "ortho_demo=ortho_nnd.cli.demo:main",
    "ortho_experiment=ortho_nnd.cli.experiment:main",
]

setup(
    name="ortho_nnd",
    version="0.1.0",
    description="Self-configuring three-view diffusion pretraining, segmentation and diagnosis for knee MRI",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ortho_nnd", "ortho_nnd.*"]),
    # The planner presets live in plans/ at the top level; a non-editable install copies
    # them to <prefix>/share/ortho_nnd/plans, where ortho_nnd.planning.presets looks second.
    data_files=[("share/ortho_nnd/plans", glob.glob("plans/*.json"))],
    install_requires=[
        "torch>=2.4",
        "SimpleITK>=2.2",
        "batchgenerators>=0.25",
        "batchgeneratorsv2>=0.2",
        "numpy>=1.24",
        "scipy>=1.10",
        "acvl-utils>=0.2",
        "dynamic-network-architectures>=0.3",
        "tqdm>=4.60",
        # matplotlib draws progress.png, overlays and report plots; nothing else in the
        # dependency list renders PNG files.
        "matplotlib>=3.6",
    ],
    extras_require={"test": ["pytest>=7.0"]},
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
)
