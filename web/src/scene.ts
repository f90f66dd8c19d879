// The 3D view: atoms as sphere impostors in one draw call (no per-atom objects, so
// 100k atoms stay interactive), bonds as instanced half-cylinders, the cell as lines.
import * as THREE from "three";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";
import type { DisplayFrame } from "./api";
import { AtomImpostors } from "./atoms";
import { findBonds } from "./bonds";
import { colorOf } from "./elements";

export const BACKGROUND = 0x1d2026;
export const ATOM_SCALE = 0.5; // of the covalent radius: ball-and-stick proportions
const BOND_RADIUS = 0.12;

export class Viewer {
  readonly renderer: THREE.WebGLRenderer;
  readonly camera: THREE.PerspectiveCamera;
  readonly controls: OrbitControls;
  private readonly scene = new THREE.Scene();
  private atoms: AtomImpostors | null = null;
  private bonds: THREE.InstancedMesh | null = null;
  private cell: THREE.LineSegments | null = null;
  private numbersKey = "";
  private selection: readonly number[] = [];
  private needsRender = true;
  private fitted = false;

  constructor(private readonly container: HTMLElement) {
    this.renderer = new THREE.WebGLRenderer({ antialias: true });
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
    this.renderer.setClearColor(BACKGROUND);
    container.append(this.renderer.domElement);
    this.camera = new THREE.PerspectiveCamera(45, 1, 0.1, 10000);
    this.controls = new OrbitControls(this.camera, this.renderer.domElement);
    this.controls.addEventListener("change", () => this.invalidate());
    this.addLights();
    new ResizeObserver(() => this.resize()).observe(container);
    this.resize();
    this.renderer.setAnimationLoop(() => this.tick());
  }

  /** Draws `frame`; rebuilds meshes only when the atoms' elements change. */
  show(frame: DisplayFrame): void {
    const key = numbersKey(frame.numbers);
    if (key !== this.numbersKey || !this.atoms) {
      this.rebuildAtoms(frame.numbers);
      this.numbersKey = key;
    }
    this.atoms!.setPositions(frame.positions);
    this.updateBonds(frame);
    this.updateCell(frame.cell);
    if (!this.fitted) this.fit(frame.positions);
    this.invalidate();
  }

  /** Highlights the selected atoms; kept across frames with the same atoms. */
  setSelection(indices: Iterable<number>): void {
    this.selection = [...indices];
    this.atoms?.setSelection(this.selection);
    this.invalidate();
  }

  clear(): void {
    for (const object of [this.bonds, this.cell]) {
      if (object) dispose(this.scene, object);
    }
    this.removeAtoms();
    this.bonds = this.cell = null;
    this.numbersKey = "";
    this.fitted = false;
    this.invalidate();
  }

  invalidate(): void {
    this.needsRender = true;
  }

  /** Turntable rotation (used to measure interactive frame rates). */
  spin(on: boolean): void {
    this.controls.autoRotate = on;
    this.controls.autoRotateSpeed = 10;
  }

  private tick(): void {
    this.controls.update();
    if (!this.needsRender) return;
    this.needsRender = false;
    this.renderer.render(this.scene, this.camera);
  }

  private resize(): void {
    const { clientWidth: w, clientHeight: h } = this.container;
    if (w === 0 || h === 0) return;
    this.renderer.setSize(w, h);
    this.camera.aspect = w / h;
    this.camera.updateProjectionMatrix();
    this.invalidate();
  }

  private addLights(): void {
    this.scene.add(new THREE.AmbientLight(0xffffff, 1.2));
    const key = new THREE.DirectionalLight(0xffffff, 2.0);
    key.position.set(1, 1, 1);
    this.camera.add(key); // the light follows the camera, so the front is always lit
    this.scene.add(this.camera);
  }

  private rebuildAtoms(numbers: Float64Array): void {
    this.removeAtoms();
    this.atoms = new AtomImpostors(numbers, ATOM_SCALE, this.camera.projectionMatrix);
    this.atoms.setSelection(this.selection);
    this.scene.add(this.atoms.mesh);
  }

  private removeAtoms(): void {
    if (!this.atoms) return;
    this.scene.remove(this.atoms.mesh);
    this.atoms.dispose();
    this.atoms = null;
  }

  private updateBonds(frame: DisplayFrame): void {
    if (this.bonds) dispose(this.scene, this.bonds);
    this.bonds = null;
    const pairs = findBonds(frame.numbers, frame.positions);
    if (pairs.length === 0) return;
    this.bonds = bondMesh(pairs, frame.numbers, frame.positions);
    this.scene.add(this.bonds);
  }

  private updateCell(cell: Float64Array | null): void {
    if (this.cell) dispose(this.scene, this.cell);
    this.cell = null;
    if (!cell || cell.every((v) => v === 0)) return;
    this.cell = cellBox(cell);
    this.scene.add(this.cell);
  }

  private fit(positions: Float64Array): void {
    if (positions.length === 0) return;
    const box = new THREE.Box3().setFromArray(positions);
    const sphere = box.getBoundingSphere(new THREE.Sphere());
    const radius = Math.max(sphere.radius, 2);
    const distance = radius / Math.sin(THREE.MathUtils.degToRad(this.camera.fov / 2));
    this.controls.target.copy(sphere.center);
    this.camera.position.copy(sphere.center).add(new THREE.Vector3(0, 0, distance * 1.1));
    this.camera.near = distance / 100;
    this.camera.far = distance * 10;
    this.camera.updateProjectionMatrix();
    this.controls.update();
    this.fitted = true;
  }
}

function numbersKey(numbers: Float64Array): string {
  // Cheap identity for "same atoms": count plus a rolling hash of the numbers.
  let h = 0;
  for (let i = 0; i < numbers.length; i++) h = (h * 31 + numbers[i]!) | 0;
  return `${numbers.length}:${h}`;
}

/** Two half-cylinders per bond, each coloured like its atom. */
function bondMesh(pairs: Uint32Array, numbers: Float64Array,
                  positions: Float64Array): THREE.InstancedMesh {
  const geometry = new THREE.CylinderGeometry(BOND_RADIUS, BOND_RADIUS, 1, 10, 1, true);
  const count = pairs.length; // pairs holds 2 atoms per bond: one half each
  const mesh = new THREE.InstancedMesh(geometry, new THREE.MeshLambertMaterial(), count);
  const at = (i: number): THREE.Vector3 => new THREE.Vector3().fromArray(positions, 3 * i);
  const up = new THREE.Vector3(0, 1, 0);
  const matrix = new THREE.Matrix4();
  const color = new THREE.Color();
  for (let k = 0; k < count; k += 2) {
    const a = at(pairs[k]!);
    const b = at(pairs[k + 1]!);
    const mid = a.clone().lerp(b, 0.5);
    const rotation = new THREE.Quaternion().setFromUnitVectors(
      up, b.clone().sub(a).normalize());
    const scale = new THREE.Vector3(1, a.distanceTo(b) / 2, 1);
    for (const [h, end] of [[k, a], [k + 1, b]] as const) {
      matrix.compose(end.clone().lerp(mid, 0.5), rotation, scale);
      mesh.setMatrixAt(h, matrix);
      mesh.setColorAt(h, color.setHex(colorOf(numbers[pairs[h]!]!)));
    }
  }
  mesh.frustumCulled = false;
  return mesh;
}

function cellBox(cell: Float64Array): THREE.LineSegments {
  const v = [0, 1, 2].map((r) => new THREE.Vector3().fromArray(cell, 3 * r));
  const corner = (i: number, j: number, k: number): THREE.Vector3 =>
    new THREE.Vector3().addScaledVector(v[0]!, i).addScaledVector(v[1]!, j)
      .addScaledVector(v[2]!, k);
  const points: THREE.Vector3[] = [];
  for (const [i, j, k] of [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0],
    [1, 0, 1], [0, 1, 1]] as const) {
    // each edge once: from a corner to its neighbour with one more coordinate set
    for (const [di, dj, dk] of [[1, 0, 0], [0, 1, 0], [0, 0, 1]] as const) {
      if (i + di > 1 || j + dj > 1 || k + dk > 1) continue;
      points.push(corner(i, j, k), corner(i + di, j + dj, k + dk));
    }
  }
  const geometry = new THREE.BufferGeometry().setFromPoints(points);
  return new THREE.LineSegments(geometry, new THREE.LineBasicMaterial({ color: 0xb0b4bc }));
}

function dispose(scene: THREE.Scene, object: THREE.Mesh | THREE.LineSegments): void {
  scene.remove(object);
  object.geometry.dispose();
  const material = object.material;
  (Array.isArray(material) ? material : [material]).forEach((m) => m.dispose());
}
