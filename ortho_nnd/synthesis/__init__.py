"""Label-map image synthesis: random-contrast, thick-slice three-view exams rendered from 3D label maps."""
from ortho_nnd.synthesis.dataset import find_label_maps, synthesize_dataset
from ortho_nnd.synthesis.labels import DEFAULT_KNEE_LABELS, load_label_names

__all__ = ["DEFAULT_KNEE_LABELS", "find_label_maps", "load_label_names", "synthesize_dataset"]
