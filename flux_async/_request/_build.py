"""Build and check a request for a model of the catalog: the two entry points users call.

:func:`build_request` picks the model's request class (:mod:`._requests`) from the catalog
(:mod:`._catalog`); :func:`validate_request` re-checks one built by hand. They live apart
from the request classes so the catalog, which names those classes, imports them one way.
"""

from __future__ import annotations

from typing import Any

from .._errors import ValidationError
from ._catalog import get_model
from ._requests import BaseRequest

__all__ = ["build_request", "validate_request"]


def build_request(model: str, prompt: str | None = None, /, **fields: Any) -> BaseRequest:
    """Return the checked request for ``model``; ``None`` values count as unset.

    Raises :class:`~flux_async.ConfigurationError` for an unknown model and
    :class:`~flux_async.ValidationError` listing every rule broken.

    Args:
        model: A model of the catalog (``flux_async.MODELS``).
        prompt: The text prompt.
        **fields: The model's request fields (``width``, ``seed``, ``input_image`` ...).

    Returns:
        An instance of the model's request class; ``to_body()`` is what is sent.

    Raises:
        ConfigurationError: ``model`` is not in the catalog (with a "did you mean").
        ValidationError: A field breaks a rule; ``errors`` lists every ``(field, rule)``.

    Examples:
        ```python
        request = build_request("flux-2-pro", "a red fox", width=1024, height=768)
        request.to_body()  # {'prompt': 'a red fox', 'width': 1024, 'height': 768}
        build_request("flux-2-pro", "a red fox", width=1000)
        # ValidationError: width: must be a multiple of 16 for flux-2-pro (got 1000)
        ```
    """
    spec = get_model(model)
    for name in ("model", "prompt"):
        if name in fields and (name == "model" or prompt is not None):
            raise ValidationError(name, "given twice: positionally and as a keyword", model=model)
    data = {name: value for name, value in fields.items() if value is not None}
    if prompt is not None:
        data["prompt"] = prompt
    return spec.request_type(model=model, **data)


def validate_request(request: BaseRequest) -> BaseRequest:
    """Check a request built by hand against the catalog and every rule; return it re-validated.

    Catches what construction cannot: an unknown ``model``, a model of another family,
    or an instance made with ``model_construct`` that skipped validation.

    Args:
        request: A request instance, however it was made.

    Returns:
        The request, validated again.

    Raises:
        ConfigurationError: Its model is not in the catalog.
        ValidationError: It breaks a rule, or its class is not the model's.

    Examples:
        ```python
        request = Flux2Request(model="flux-2-pro", prompt="a red fox")
        validate_request(request)
        ```
    """
    spec = get_model(request.model)
    if not isinstance(request, spec.request_type):
        rule = f"{request.model} takes {spec.request_type.__name__}, not {type(request).__name__}"
        raise ValidationError("model", rule, model=request.model)
    return request.replace()
