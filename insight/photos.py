"""The study's photos: scikit-image's bundled colour photographs, with the licences scikit-image documents.

Grey-level images (camera, coins, ...) and synthetic ones (colorwheel, logo) are left out: the model takes
RGB photographs. `chelsea` and `cat` are the same picture, so only `chelsea` is used.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class Photo:
    name: str  # the skimage.data function
    licence: str  # as the function's docstring states it


PHOTOS = (
    Photo("chelsea", "CC0, by the photographer Stefan van der Walt"),
    Photo("coffee", "CC0, by the photographer Rachel Michetti (courtesy of Pikolo Espresso Bar)"),
    Photo("astronaut", "public domain (NASA Great Images database)"),
    Photo("rocket", "public domain (SpaceX photos)"),
    Photo("hubble_deep_field", "public domain (NASA, HubbleSite)"),
    Photo("immunohistochemistry", "no known copyright restrictions (CMMI)"),
    Photo("retina", "CC0 1.0 (Mikael Häggström, Wikimedia Commons)"),
)


def load_photo(photo: Photo) -> Image.Image:
    from skimage import data  # scikit-image is part of the `insight` extra

    return Image.fromarray(getattr(data, photo.name)()).convert("RGB")
