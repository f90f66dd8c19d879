// Bonds from covalent radii: atoms i, j bond when closer than TOLERANCE * (r_i + r_j).
// A uniform grid keeps it O(N); periodic images are not bonded (drawn bonds would
// cross the whole cell).
import { radiusOf } from "./elements";

export const MAX_ATOMS_FOR_BONDS = 2000;
const TOLERANCE = 1.2;

export function findBonds(numbers: Float64Array, positions: Float64Array): Uint32Array {
  const n = numbers.length;
  if (n === 0 || n > MAX_ATOMS_FOR_BONDS) return new Uint32Array(0);
  const radii = Float64Array.from(numbers, radiusOf);
  const cellSize = 2 * TOLERANCE * Math.max(...radii);
  const grid = buildGrid(positions, n, cellSize);
  const pairs: number[] = [];
  for (let i = 0; i < n; i++) {
    forNeighbours(grid, positions, i, cellSize, (j) => {
      if (j <= i) return;
      const cutoff = TOLERANCE * (radii[i]! + radii[j]!);
      if (distanceSq(positions, i, j) < cutoff * cutoff) pairs.push(i, j);
    });
  }
  return Uint32Array.from(pairs);
}

type Grid = Map<string, number[]>;

const cellKey = (x: number, y: number, z: number): string => `${x},${y},${z}`;

function buildGrid(positions: Float64Array, n: number, size: number): Grid {
  const grid: Grid = new Map();
  for (let i = 0; i < n; i++) {
    const key = cellKey(...cellOf(positions, i, size));
    const bucket = grid.get(key);
    if (bucket) bucket.push(i); else grid.set(key, [i]);
  }
  return grid;
}

function cellOf(p: Float64Array, i: number, size: number): [number, number, number] {
  return [Math.floor(p[3 * i]! / size), Math.floor(p[3 * i + 1]! / size),
    Math.floor(p[3 * i + 2]! / size)];
}

function forNeighbours(grid: Grid, p: Float64Array, i: number, size: number,
                       visit: (j: number) => void): void {
  const [cx, cy, cz] = cellOf(p, i, size);
  for (let dx = -1; dx <= 1; dx++) {
    for (let dy = -1; dy <= 1; dy++) {
      for (let dz = -1; dz <= 1; dz++) {
        grid.get(cellKey(cx + dx, cy + dy, cz + dz))?.forEach(visit);
      }
    }
  }
}

function distanceSq(p: Float64Array, i: number, j: number): number {
  const dx = p[3 * i]! - p[3 * j]!;
  const dy = p[3 * i + 1]! - p[3 * j + 1]!;
  const dz = p[3 * i + 2]! - p[3 * j + 2]!;
  return dx * dx + dy * dy + dz * dz;
}
