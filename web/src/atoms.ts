// Atoms as ray-cast sphere impostors: one camera-facing quad per atom (two triangles),
// the sphere is found per pixel with exact depth. Far cheaper than sphere meshes at
// 100k atoms, and round at any zoom. Picking (a later round) is a CPU ray test.
// The quads are plain (not instanced) geometry: ANGLE on SwiftShader was ~50x slower
// with per-instance attributes.
import * as THREE from "three";
import { colorOf, radiusOf } from "./elements";

const QUAD_MARGIN = 1.25; // the silhouette of a near sphere exceeds its radius

const vertexShader = /* glsl */ `
attribute vec2 corner;
attribute float radius;
attribute vec3 color;
attribute float selected;
varying vec3 vCenter;
varying vec3 vPoint;
varying vec3 vColor;
varying float vRadius;
varying float vSelected;
void main() {
  vSelected = selected;
  vec4 c = modelViewMatrix * vec4(position, 1.0);
  vec3 point = c.xyz + vec3(corner * ${QUAD_MARGIN.toFixed(2)} * radius, 0.0);
  vCenter = c.xyz;
  vPoint = point;
  vColor = color;
  vRadius = radius;
  gl_Position = projectionMatrix * vec4(point, 1.0);
}`;

const fragmentShader = /* glsl */ `
const vec3 HIGHLIGHT = vec3(1.0, 0.85, 0.1);
uniform mat4 uProjection;
varying vec3 vCenter;
varying vec3 vPoint;
varying vec3 vColor;
varying float vRadius;
varying float vSelected;
void main() {
  vec3 dir = normalize(vPoint);
  float b = dot(dir, vCenter);
  float h = b * b - dot(vCenter, vCenter) + vRadius * vRadius;
  if (h < 0.0) discard;
  vec3 hit = dir * (b - sqrt(h));
  vec3 normal = (hit - vCenter) / vRadius;
  vec4 clip = uProjection * vec4(hit, 1.0);
  gl_FragDepth = 0.5 * clip.z / clip.w + 0.5;
  vec3 light = normalize(vec3(0.4, 0.5, 1.0));
  float diffuse = max(dot(normal, light), 0.0);
  float specular = pow(max(dot(reflect(-light, normal), -dir), 0.0), 40.0);
  vec3 shaded = vColor * (0.35 + 0.7 * diffuse) + 0.25 * specular;
  // selected atoms: tinted towards the highlight colour, with a bright rim
  float rim = pow(1.0 - max(dot(normal, -dir), 0.0), 2.0);
  vec3 highlight = mix(shaded, HIGHLIGHT, 0.45) + HIGHLIGHT * rim;
  gl_FragColor = vec4(mix(shaded, highlight, vSelected), 1.0);
}`;

const CORNERS = [-1, -1, 1, -1, 1, 1, -1, 1];
const QUAD_TRIANGLES = [0, 1, 2, 0, 2, 3];

export class AtomImpostors {
  readonly mesh: THREE.Mesh<THREE.BufferGeometry, THREE.ShaderMaterial>;
  private readonly centers: THREE.BufferAttribute;
  private readonly selected: THREE.BufferAttribute;
  private selection: readonly number[] = [];

  constructor(numbers: Float64Array, scale: number, projection: THREE.Matrix4) {
    const n = numbers.length;
    const geometry = new THREE.BufferGeometry();
    // "position" holds each atom's centre (four times), so three.js sees a normal mesh
    this.centers = new THREE.BufferAttribute(new Float32Array(12 * n), 3);
    this.centers.setUsage(THREE.DynamicDrawUsage);
    geometry.setAttribute("position", this.centers);
    geometry.setAttribute("corner", new THREE.BufferAttribute(perVertex(n, CORNERS), 2));
    const radii = Float32Array.from(numbers, (z) => scale * radiusOf(z));
    geometry.setAttribute("radius", new THREE.BufferAttribute(repeat4(radii, 1), 1));
    geometry.setAttribute("color", new THREE.BufferAttribute(repeat4(colors(numbers), 3), 3));
    this.selected = new THREE.BufferAttribute(new Float32Array(4 * n), 1);
    this.selected.setUsage(THREE.DynamicDrawUsage);
    geometry.setAttribute("selected", this.selected);
    geometry.setIndex(new THREE.BufferAttribute(quadIndices(n), 1));
    const material = new THREE.ShaderMaterial({
      vertexShader, fragmentShader, uniforms: { uProjection: { value: projection } },
    });
    this.mesh = new THREE.Mesh(geometry, material);
    this.mesh.frustumCulled = false; // bounds would need recomputing on every frame
  }

  setPositions(positions: Float64Array): void {
    const out = this.centers.array as Float32Array;
    for (let i = 0, o = 0; i < positions.length; i += 3) {
      const x = positions[i]!, y = positions[i + 1]!, z = positions[i + 2]!;
      for (let k = 0; k < 4; k++, o += 3) {
        out[o] = x; out[o + 1] = y; out[o + 2] = z;
      }
    }
    this.centers.needsUpdate = true;
  }

  /** Highlights atoms `indices` (and only those); out-of-range indices are ignored. */
  setSelection(indices: Iterable<number>): void {
    const flags = this.selected.array as Float32Array;
    for (const i of this.selection) flags.fill(0, 4 * i, 4 * i + 4);
    const n = flags.length / 4;
    this.selection = [...indices].filter((i) => i >= 0 && i < n);
    for (const i of this.selection) flags.fill(1, 4 * i, 4 * i + 4);
    this.selected.needsUpdate = true;
  }

  dispose(): void {
    this.mesh.geometry.dispose();
    this.mesh.material.dispose();
  }
}

function perVertex(n: number, pattern: number[]): Float32Array {
  const out = new Float32Array(n * pattern.length);
  for (let i = 0; i < n; i++) out.set(pattern, i * pattern.length);
  return out;
}

/** Each atom's `width` values, once per corner of its quad. */
function repeat4(values: Float32Array, width: number): Float32Array {
  const out = new Float32Array(4 * values.length);
  for (let i = 0; i < values.length / width; i++) {
    const item = values.subarray(i * width, (i + 1) * width);
    for (let k = 0; k < 4; k++) out.set(item, (4 * i + k) * width);
  }
  return out;
}

function quadIndices(n: number): Uint32Array {
  const out = new Uint32Array(6 * n);
  for (let i = 0; i < n; i++) {
    QUAD_TRIANGLES.forEach((v, k) => { out[6 * i + k] = 4 * i + v; });
  }
  return out;
}

function colors(numbers: Float64Array): Float32Array {
  const out = new Float32Array(3 * numbers.length);
  const color = new THREE.Color();
  // the shader writes these straight out: keep them in the output (sRGB) space
  numbers.forEach((z, i) => color.setHex(colorOf(z), THREE.LinearSRGBColorSpace)
    .toArray(out, 3 * i));
  return out;
}
