"""Reconstruction of the ORIGINAL Aeropartners payments API, used only as a benchmark baseline.

The original system (docs: shared/spec/original-README.md) was Python 3.11 + FastAPI +
SQLAlchemy 2.0 (sync ORM over psycopg2) + PostgreSQL 15, run with uvicorn. Its
`src/aeropartners/api/pagos.py` router accepted a payment in one transaction: insert the `Pago`
row (estado PENDIENTE) and an outbox row carrying the `PagoPendiente` event, commit, answer. A
separate outbox processor relayed the events to Pulsar and the Stripe adapter processed the
payment later; neither is part of the request path, so neither is reproduced here.

This file keeps the layers of the original in one module (settings, models, schemas, a
repository-ish router with a session per request) and is written the plain way, with the
framework defaults: sync `def` endpoints (FastAPI runs them in its threadpool), SQLAlchemy's
default connection pool, a `get_db` dependency that opens and closes a `Session`.

Environment:
  DATABASE_URL     postgres://user:pass@host:port/db (required)
  ORIGINAL_SCHEMA  schema that holds this app's tables (default: original); created at start-up,
                   no other schema is touched.

Run from this directory: `uvicorn app:app --host 127.0.0.1 --port 8000`
(or `scripts/original.sh run PORT` from the repository root).
"""

from __future__ import annotations

import os
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from decimal import Decimal
from enum import Enum
from typing import Optional

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import (
    Boolean,
    DateTime,
    MetaData,
    Numeric,
    String,
    Text,
    create_engine,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

# ---------------------------------------------------------------------------
# seedwork/infraestructura/db.py


def _sqlalchemy_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


DATABASE_URL = _sqlalchemy_url(
    os.environ.get("DATABASE_URL", "postgres://postgres:postgres@localhost:5433/aeropartners")
)
SCHEMA = os.environ.get("ORIGINAL_SCHEMA", "original")

engine = create_engine(DATABASE_URL)
SessionLocal = sessionmaker(bind=engine, autocommit=False, autoflush=False)


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


def get_db():
    db = SessionLocal()
    try:
        yield db
    finally:
        db.close()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------------------
# modulos/pagos/dominio


class Moneda(str, Enum):
    USD = "USD"
    EUR = "EUR"
    COP = "COP"


class EstadoPago(str, Enum):
    PENDIENTE = "PENDIENTE"
    PROCESANDO = "PROCESANDO"
    EXITOSO = "EXITOSO"
    FALLIDO = "FALLIDO"


# ---------------------------------------------------------------------------
# modulos/pagos/infraestructura/modelos.py


class PagoModel(Base):
    __tablename__ = "pagos"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    id_afiliado: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    monto: Mapped[Decimal] = mapped_column(Numeric(15, 2), nullable=False)
    moneda: Mapped[str] = mapped_column(String(3), nullable=False)
    referencia_pago: Mapped[str] = mapped_column(String(255), nullable=False, unique=True)
    estado: Mapped[str] = mapped_column(String(20), nullable=False, default=EstadoPago.PENDIENTE.value)
    mensaje_error: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    referencia_transaccion: Mapped[Optional[str]] = mapped_column(String(255), nullable=True)
    fecha_creacion: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    fecha_actualizacion: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow
    )
    fecha_procesamiento: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)


class OutboxModel(Base):
    __tablename__ = "outbox"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    event_type: Mapped[str] = mapped_column(String(100), nullable=False)
    aggregate_id: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    payload: Mapped[dict] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    processed: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, index=True)
    processed_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True), nullable=True)
    error_message: Mapped[Optional[str]] = mapped_column(Text, nullable=True)


def create_tables() -> None:
    # Several uvicorn workers start at once: serialise the DDL with an advisory lock.
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "original-schema:" + SCHEMA})
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"'))
        Base.metadata.create_all(conn)


# ---------------------------------------------------------------------------
# api/pagos.py — schemas


class ProcesarPagoRequest(BaseModel):
    id_afiliado: str = Field(..., min_length=1, max_length=255)
    monto: Decimal = Field(..., gt=0, max_digits=15, decimal_places=2)
    moneda: Moneda
    referencia_pago: str = Field(..., min_length=1, max_length=255)


class ProcesarPagoResponse(BaseModel):
    id_pago: str
    id_afiliado: str
    monto: float
    moneda: str
    estado: str
    referencia_pago: str
    fecha_creacion: datetime
    mensaje: str


class PagoResponse(BaseModel):
    id: str
    id_pago: str
    id_afiliado: str
    monto: float
    moneda: str
    estado: str
    referencia_pago: str
    fecha_creacion: datetime
    fecha_actualizacion: datetime
    fecha_procesamiento: Optional[datetime] = None
    mensaje_error: Optional[str] = None
    referencia_transaccion: Optional[str] = None


class OutboxEstadisticas(BaseModel):
    total_eventos: int
    eventos_procesados: int
    eventos_pendientes: int
    eventos_fallidos: int


# ---------------------------------------------------------------------------
# api/pagos.py — router

router = APIRouter(prefix="/pagos", tags=["pagos"])


@router.post("/", response_model=ProcesarPagoResponse)
def procesar_pago(request: ProcesarPagoRequest, db: Session = Depends(get_db)):
    ahora = utcnow()
    pago = PagoModel(
        id=uuid.uuid4(),
        id_afiliado=request.id_afiliado,
        monto=request.monto,
        moneda=request.moneda.value,
        referencia_pago=request.referencia_pago,
        estado=EstadoPago.PENDIENTE.value,
        fecha_creacion=ahora,
        fecha_actualizacion=ahora,
    )
    evento = OutboxModel(
        id=uuid.uuid4(),
        event_type="PagoPendiente",
        aggregate_id=str(pago.id),
        payload={
            "id_pago": str(pago.id),
            "id_afiliado": pago.id_afiliado,
            "monto": float(pago.monto),
            "moneda": pago.moneda,
            "referencia_pago": pago.referencia_pago,
            "estado": pago.estado,
            "fecha_creacion": ahora.isoformat(),
        },
        created_at=ahora,
        processed=False,
    )
    db.add(pago)
    db.add(evento)
    try:
        db.commit()
    except IntegrityError:
        db.rollback()
        raise HTTPException(
            status_code=409,
            detail=f"Ya existe un pago con la referencia {request.referencia_pago}",
        )

    return ProcesarPagoResponse(
        id_pago=str(pago.id),
        id_afiliado=pago.id_afiliado,
        monto=float(pago.monto),
        moneda=pago.moneda,
        estado=pago.estado,
        referencia_pago=pago.referencia_pago,
        fecha_creacion=pago.fecha_creacion,
        mensaje="Pago recibido y en proceso",
    )


# Declared before /{id_pago} so that "outbox" is not taken for an id.
@router.get("/outbox/estadisticas", response_model=OutboxEstadisticas)
def estadisticas_outbox(db: Session = Depends(get_db)):
    total = db.scalar(select(func.count()).select_from(OutboxModel)) or 0
    procesados = db.scalar(select(func.count()).select_from(OutboxModel).where(OutboxModel.processed.is_(True))) or 0
    fallidos = (
        db.scalar(
            select(func.count())
            .select_from(OutboxModel)
            .where(OutboxModel.processed.is_(False), OutboxModel.error_message.is_not(None))
        )
        or 0
    )
    return OutboxEstadisticas(
        total_eventos=total,
        eventos_procesados=procesados,
        eventos_pendientes=total - procesados - fallidos,
        eventos_fallidos=fallidos,
    )


@router.get("/{id_pago}", response_model=PagoResponse)
def obtener_pago(id_pago: uuid.UUID, db: Session = Depends(get_db)):
    pago = db.get(PagoModel, id_pago)
    if pago is None:
        raise HTTPException(status_code=404, detail="Pago no encontrado")
    return PagoResponse(
        id=str(pago.id),
        id_pago=str(pago.id),
        id_afiliado=pago.id_afiliado,
        monto=float(pago.monto),
        moneda=pago.moneda,
        estado=pago.estado,
        referencia_pago=pago.referencia_pago,
        fecha_creacion=pago.fecha_creacion,
        fecha_actualizacion=pago.fecha_actualizacion,
        fecha_procesamiento=pago.fecha_procesamiento,
        mensaje_error=pago.mensaje_error,
        referencia_transaccion=pago.referencia_transaccion,
    )


# ---------------------------------------------------------------------------
# main.py


@asynccontextmanager
async def lifespan(_app: FastAPI):
    create_tables()
    yield
    engine.dispose()


app = FastAPI(
    title="Aeropartners - Microservicio de Pagos (original)",
    version="1.0.0",
    lifespan=lifespan,
)
app.include_router(router)


@app.get("/health")
async def health():
    return {"status": "healthy", "service": "aeropartners-pagos"}
