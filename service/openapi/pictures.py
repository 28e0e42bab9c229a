"""The pictures of a layer (filters, activation maps), the class labels and the page: their schemas and paths."""

from __future__ import annotations

from service.openapi.common import ERRORS, STRING, STRINGS, binary, ok
from service.openapi.options import MAPS_OPTIONS, form, image_body, json_request, query_parameters

LABELS = {
    "type": "object",
    "required": ["model", "layer", "labels"],
    "properties": {
        "model": STRING,
        "layer": {"type": ["string", "null"], "description": "the layer whose outputs the labels index"},
        "labels": STRINGS,
    },
}
_PNG = binary("image/png", "PNG")

PICTURE_SCHEMAS = {
    "MapsForm": form(MAPS_OPTIONS, max_images=1),
    "MapsJSONRequest": json_request(MAPS_OPTIONS, "one input and the drawing options", max_items=1),
}


def picture_paths(model: dict) -> dict:
    """Pictures of a layer, class labels and the page (service/picture_routes.py; sizes: engine/pictures.py)."""
    layer = {"name": "layer_name", "in": "path", "required": True, "schema": STRING, "example": "stem"}
    errors = {code: ERRORS[code] for code in ("400", "401", "404")}
    return {
        "/": {
            "get": {
                "operationId": "get_page",
                "tags": ["pictures"],
                "summary": "the page: feature maps, receptive fields and top-5 classes of an image (no API key needed)",
                "security": [],
                "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": STRING}}}},
            }
        },
        "/v1/models/{model_name}/labels": {
            "get": {
                "operationId": "get_labels",
                "tags": ["models"],
                "summary": "class names, in the order of the logits layer's outputs",
                "parameters": [model],
                "responses": {"200": ok("Labels", "labels"), "401": ERRORS["401"], "404": ERRORS["404"]},
            }
        },
        "/v1/models/{model_name}/layers/{layer_name}/filters.png": {
            "get": {
                "operationId": "get_filters_png",
                "tags": ["pictures"],
                "summary": "the first convolution's filters as a colour grid (400 for layers that do not see pixels)",
                "description": "Each filter is scaled by its own largest |weight| (zero weight = grey) and enlarged "
                "with nearest neighbour to s = max(1, 48 // kernel) pixels per weight, 8 filters per row, 2-pixel "
                "gaps: width = columns·(kw·s + 2) + 2, height = rows·(kh·s + 2) + 2; 402×202 for the 32 3×3 "
                "filters of EfficientNet-Lite0.",
                "parameters": [model, layer],
                "responses": {"200": _PNG, **errors},
            }
        },
        "/v1/models/{model_name}/layers/{layer_name}/maps.png": {
            "post": {
                "operationId": "draw_maps_png",
                "tags": ["pictures"],
                "summary": "the k strongest channels of one image's map at a layer, over the image, captioned",
                "description": "Channels with the highest mean activation, each stretched to its own min..max, "
                "upsampled bilinearly and drawn in viridis at opacity alpha over the preprocessed input in grey; "
                "the caption gives level, stride and receptive field. min(k, channels) tiles of the input size "
                "H×W, 4 per row, 4-pixel gaps, 40-pixel caption: width = columns·(W + 4) + 4, height = 40 + "
                "rows·(H + 4) + 4 (916×500 for k = 8 at 224 px). Same input forms as /features, one image only; "
                "vector layers have no map (400).",
                "parameters": [model, layer, *query_parameters(MAPS_OPTIONS)],
                "requestBody": image_body("MapsForm", "MapsJSONRequest"),
                "responses": {"200": _PNG, **ERRORS},
            }
        },
    }
