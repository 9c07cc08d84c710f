"""Tracing, off unless an OTLP endpoint is set: one span per completion request following the
OpenTelemetry GenAI semantic conventions, a child of the client's W3C `traceparent` when it
sent one, and its own `traceparent` forwarded to the worker (vLLM continues the trace).

Spans carry model names, token counts, timings and statuses: never a prompt or a completion.
"""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.record import RequestRecord
from gateway.request import RequestView

_REQUEST_PARAMS = {  # body field -> GenAI attribute, when the client set it
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
}


class Tracing:
    def __init__(self, processor: SpanProcessor) -> None:
        self._provider = TracerProvider(resource=Resource.create({"service.name": "llm-gateway"}))
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("gateway")
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def to_otlp(cls, endpoint: str) -> Tracing:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return cls(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))

    def start(self, headers: list[tuple[bytes, bytes]], operation: str) -> RequestSpan:
        """A span for one request, a child of the client's trace context when it sent one."""
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in headers
            if name in (b"traceparent", b"tracestate")
        }
        parent = self._propagator.extract(carrier) if carrier else None
        span = self._tracer.start_span(
            operation,
            context=parent,
            kind=SpanKind.CLIENT,
            attributes={"gen_ai.operation.name": operation, "gen_ai.provider.name": "vllm"},
        )
        return RequestSpan(span, operation, self._propagator)

    def shutdown(self) -> None:
        self._provider.shutdown()


class RequestSpan:
    def __init__(
        self, span: Span, operation: str, propagator: TraceContextTextMapPropagator
    ) -> None:
        self._span = span
        self._operation = operation
        self._propagator = propagator

    def traceparent(self) -> list[tuple[str, str]]:
        """Headers that make the worker's work part of this span's trace."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=set_span_in_context(self._span))
        return list(carrier.items())

    def finish(self, record: RequestRecord) -> None:
        """Describe the ended request on the span, and end it."""
        span = self._span
        if record.view is not None:
            self._describe_request(record.view)
        status = record.status
        span.set_attribute("http.response.status_code", status)
        if record.relayed:
            if record.worker is not None:
                span.set_attribute("gateway.worker", record.worker)
            timing = record.timing
            span.set_attribute("gateway.queue_wait_seconds", timing.queued)
            if timing.first_event is not None:
                span.set_attribute(
                    "gen_ai.response.time_to_first_chunk", timing.first_event - timing.started
                )
            if record.usage is not None:
                span.set_attribute("gen_ai.usage.input_tokens", record.usage.prompt)
                span.set_attribute("gen_ai.usage.output_tokens", record.usage.completion)
        if status >= 400 or record.error_code:
            span.set_attribute("error.type", record.error_code or str(status))
            if status >= 500 or status == 499:
                span.set_status(Status(StatusCode.ERROR))
        span.end()

    def _describe_request(self, view: RequestView) -> None:
        span = self._span
        span.update_name(f"{self._operation} {view.model}")
        span.set_attribute("gen_ai.request.model", view.model)
        if view.max_tokens is not None:
            span.set_attribute("gen_ai.request.max_tokens", view.max_tokens)
        if view.n != 1:
            span.set_attribute("gen_ai.request.choice.count", view.n)
        for name, attribute in _REQUEST_PARAMS.items():
            value = view.doc.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                span.set_attribute(attribute, value)
        span.set_attribute("gateway.stream", view.stream)
