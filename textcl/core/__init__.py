"""Modality-free parts shared by text objectives and vision methods."""
