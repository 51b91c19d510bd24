"""ml v1 routes: placeholder until implemented."""
from fastapi import APIRouter

router = APIRouter()
