"""OpenTelemetry traces, off unless `otlp_traces_endpoint` is set.

One trace per request: the HTTP server span (FastAPI), a client span per gRPC
call to Triton, whose W3C trace context (`traceparent`) travels in the call's
metadata, and, with Triton's OpenTelemetry trace mode on (deploy/README.md),
Triton's own spans as their children. The request id is on the gateway's
server span (`deepfake.request_id`) and is sent as Triton's inference request
id, which Triton puts on its spans (`triton.request_id`). Exported over
OTLP/HTTP, as Triton exports, so one collector endpoint serves both.
"""

from contextvars import ContextVar
from typing import TYPE_CHECKING

from opentelemetry import trace

if TYPE_CHECKING:  # gateway.server.settings imports model_server, which imports this module
    from fastapi import FastAPI

    from gateway.server.settings import Settings

# The request being served, for the calls it makes to Triton (contextvars follow
# asyncio tasks, so every batch of a request sees its own id).
REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="")

REQUEST_ID_ATTRIBUTE = "deepfake.request_id"
# Only calls made for a request: the readiness checks' ServerReady/ModelReady
# every few seconds would each start a trace of their own.
TRACED_RPCS = ("ModelInfer", "ModelConfig", "ModelMetadata")
UNTRACED_URLS = "healthz,readyz,metrics,static"


def bind_request(request_id: str) -> None:
    """Called once per request, inside its server span (a no-op span when off)."""
    REQUEST_ID.set(request_id)
    trace.get_current_span().set_attribute(REQUEST_ID_ATTRIBUTE, request_id)


def current_request_id() -> str:
    return REQUEST_ID.get()


def install_tracing(app: "FastAPI", settings: "Settings") -> bool:
    """Instrument the app and gRPC client calls; False (nothing done) when off.
    The provider flushes its batch at interpreter exit (shutdown_on_exit)."""
    if not settings.otlp_traces_endpoint:
        return False
    # Imported here: an untraced gateway loads none of the SDK.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, filters
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.trace_service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)),
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_traces_endpoint))
    )
    trace.set_tracer_provider(provider)
    rpcs = filters.any_of(*(filters.method_name(name) for name in TRACED_RPCS))
    GrpcAioInstrumentorClient(filter_=rpcs).instrument(tracer_provider=provider)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=UNTRACED_URLS)
    return True
