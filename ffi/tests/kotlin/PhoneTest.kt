// Two phones, a real server, the generated Kotlin bindings on the JVM (JNA).
// Prints "N passed, N failed" and exits non-zero on any failure.
import java.io.File
import java.net.ServerSocket
import java.net.URL
import java.nio.file.Files
import java.util.UUID
import kotlinx.coroutines.runBlocking
import uniffi.qiaomen.*

fun check(cond: Boolean, what: String) { if (!cond) throw AssertionError(what) }

fun tempPath(): String = Files.createTempDirectory("phone").resolve("p.db").toString()

/** The server's org, driven through `qiaomen-server admin`. */
class Org(val bin: String, val data: String, val url: String) {
    fun admin(vararg args: String): String {
        val p = ProcessBuilder(listOf(bin, "admin", "--data-dir", data) + args).redirectErrorStream(true).start()
        val out = p.inputStream.bufferedReader().readText().trim()
        check(p.waitFor() == 0, "admin ${args[0]} failed: $out")
        return out
    }
    fun grid(): String {
        val g = "kt-" + UUID.randomUUID().toString().take(8)
        admin("unit", "add", "--id", g, "--kind", "grid", "--parent", "kt-village", "--name", g)
        return g
    }
    fun code(unit: String, role: String = "grid_worker"): String {
        val login = "u-" + UUID.randomUUID().toString().take(12)
        admin("user", "add", "--login", login, "--name", "测试员")
        // Since the start of the year: the tests record visits for fixed past days (a visit
        // may not be for a cycle before its worker held the grid).
        admin("assign", "--login", login, "--unit", unit, "--role", role, "--from", "2026-01-01")
        return admin("enroll-code", "--login", login)
    }
    fun worker(grid: String): Phone = runBlocking { enroll(tempPath(), url, code(grid)) }
}

fun visit(note: String, day: String = "2026-11-15") = NewVisit(
    day, 1_763_164_800_000L, null, Gps(34.75, 113.62, 5.0), VisitOutcome.MET, listOf(),
    listOf(Need(NeedCategory.HEALTH_CARE, "降压药")), listOf(), listOf(Hazard(HazardKind.ELECTRICAL, "电线老化")),
    listOf(Publicity.ANTI_FRAUD), note, listOf(NewDemand(NeedCategory.HOUSING, "屋顶漏雨", Urgency.URGENT)))

fun household(grid: String) = NewHousehold(grid, "东村三组", "17", "13812345678", null,
    listOf(Tag(KeyGroup.ELDERLY_ALONE, "2024-03-01", null)))

fun sync(phone: Phone, seen: MutableList<SyncProgress>? = null): SyncSummary = runBlocking {
    phone.sync(object : SyncListener { override fun onProgress(progress: SyncProgress) { seen?.add(progress) } })
}

fun twoPhonesSeeBothVisits(org: Org) {
    val grid = org.grid()
    val a = org.worker(grid); val b = org.worker(grid)
    val hid = a.createHousehold(household(grid))
    a.addMember(hid, NewMember(Relation.HEAD, "王建国", "410108195001011234", "1950-01-01", null, listOf()))
    sync(a); sync(b)
    check(b.householdIds() == listOf(hid), "b received the household")
    check(b.grids() == listOf(grid), "b knows its grid")
    val roster = b.roster(grid, "2026-11-15")
    check(roster.size == 1 && roster[0].keyGroups == listOf(KeyGroup.ELDERLY_ALONE), "roster with key group")
    a.recordVisit(hid, visit("王：老人身体还好")); b.recordVisit(hid, visit("李：补访"))
    val seen = mutableListOf<SyncProgress>()
    val summary = sync(a, seen)
    check(summary.progress.roundTrips == 1u && summary.accepted == 1uL, "one round trip, acknowledged")
    check(seen.isNotEmpty(), "progress reported")
    sync(b); sync(a)
    val ra = a.household(hid); val rb = b.household(hid)
    check(ra == rb, "same merged record")
    check(ra.visits.map { it.note }.sorted() == listOf("李：补访", "王：老人身体还好"), "both visits")
    check(ra.members[0].idNumberMasked == "410***********1234", "masked id number")
    check(a.pendingCount() == 0uL && b.pendingCount() == 0uL, "nothing pending")
    // The visit-day coverage and the grid's work orders, offline, by the shared rules.
    val due = a.coverage(grid, "2026-11-15")
    check(due.size == 1 && due[0].status == CoverageStatus.VISITED && due[0].attempts == 2u, "coverage: visited twice")
    val orders = a.workOrders(grid)
    check(orders.size == 2 && orders.all { it.waitsFor == StepKind.TRIAGE }, "two demands wait for triage")
    a.demandStep(hid, orders[0].demandId, DemandStepInput(DemandAction.TAKE, "即办", null))
    check(a.workOrders(grid).any { it.status == DemandStatus.HANDLING }, "taken at once")
    check(a.taskLists().isEmpty(), "no weekly task list pushed")
}

fun conflictVisibleAndResolved(org: Org) {
    val grid = org.grid()
    val a = org.worker(grid); val b = org.worker(grid)
    val hid = a.createHousehold(household(grid))
    sync(a); sync(b)
    a.updateHousehold(hid, HouseholdUpdate(null, "17A", null, null))
    b.updateHousehold(hid, HouseholdUpdate(null, "17-1", null, null))
    sync(a); sync(b); sync(a)
    val c = a.conflicts(hid)
    check(c.size == 1 && c[0].path == listOf("door_number"), "one conflict on door_number")
    val pick = c[0].values.first { it.valueJson == "\"17-1\"" }
    check(c[0].values.map { it.deviceId }.toSet() == setOf(a.deviceId(), b.deviceId()) && pick.atMs > 0, "author and time")
    a.resolveConflict(hid, c[0].path, pick.op)
    check(a.conflicts(hid).isEmpty(), "resolved")
    sync(a); sync(b)
    check(b.household(hid).doorNumber == "17-1" && b.conflicts(hid).isEmpty(), "resolution reached b")
}

fun forbiddenEditRefusedAtOnce(org: Org) {
    val grid = org.grid()
    val phone = org.worker(grid)
    val hid = phone.createHousehold(household(grid))
    sync(phone)
    // Marking a household merged is a supervisor's decision: with the rights its sync brought,
    // the phone refuses it at once (as the server would), naming what, and stores nothing.
    try {
        phone.updateHousehold(hid, HouseholdUpdate(null, null, null, HouseholdStatus.MERGED)); check(false, "no error")
    } catch (e: QiaomenException.NotAllowed) {
        check(e.what == "status" && e.code == "not_allowed", "names what was refused")
    }
    check(phone.pendingCount() == 0uL && phone.rejectedChanges().isEmpty(), "nothing stored")
    check(phone.household(hid).status == HouseholdStatus.ACTIVE, "unchanged")
    phone.recordVisit(hid, visit("recorded"))
    check(sync(phone).rejected == 0uL && phone.pendingCount() == 0uL, "keeps working")
}

fun errorsAreTyped(org: Org) {
    val grid = org.grid()
    val code = org.code(grid)
    val path = tempPath()
    try { runBlocking { enroll(path, "http://127.0.0.1:9", code) }; check(false, "no error") } catch (e: QiaomenException.Network) {
        check(e.failure == "unreachable", "says how the network failed")
    }
    val p = runBlocking { enroll(path, org.url, code) }
    p.setSyncPolicy(SyncPolicy(3u, 10.0, 30.0, 16384uL))
    check(sync(p).rejected == 0uL, "syncs with the app's policy")
    try { runBlocking { enroll(tempPath(), org.url, code) }; check(false, "no error") } catch (e: QiaomenException.Unauthorized) {}
    try { Phone.open(tempPath()); check(false, "no error") } catch (e: QiaomenException.Unauthorized) {}
    try { p.household("not-a-uuid"); check(false, "no error") } catch (e: QiaomenException.InvalidInput) {}
    try { p.household(UUID.randomUUID().toString()); check(false, "no error") } catch (e: QiaomenException.NotFound) {}
    val hid = p.createHousehold(household(grid))
    try { p.recordVisit(hid, visit("x", "2026-11-16")); check(false, "no error") } catch (e: QiaomenException.InvalidInput) {}
    try {
        p.addMember(hid, NewMember(Relation.HEAD, "王建国", "12345", null, null, listOf())); check(false, "no error")
    } catch (e: QiaomenException.InvalidInput) {
        check(e.invalidField == "member_id_number" && e.rule == "id_format", "names the field")
    }
    check(Phone.open(path).deviceId() == p.deviceId(), "reopened as the same device")
}

fun revokedPhoneIsWiped(org: Org) {
    val grid = org.grid()
    val phone = org.worker(grid)
    val hid = phone.createHousehold(household(grid))
    sync(phone)
    phone.recordVisit(hid, visit("offline, then the phone is lost"))
    org.admin("revoke", "--device", phone.deviceId())
    try { sync(phone); check(false, "no error") } catch (e: QiaomenException.Revoked) {}
    check(phone.householdIds().isEmpty() && phone.pendingCount() == 0uL, "wiped")
}

fun retiredPhoneUploadsThenIsWiped(org: Org) {
    val grid = org.grid()
    val phone = org.worker(grid); val colleague = org.worker(grid)
    val hid = phone.createHousehold(household(grid))
    sync(phone)
    phone.recordVisit(hid, visit("recorded before the handover"))
    org.admin("retire", "--device", phone.deviceId())
    try { sync(phone); check(false, "no error") } catch (e: QiaomenException.Retired) { check(e.wiped, "wiped") }
    check(phone.householdIds().isEmpty() && phone.pendingCount() == 0uL, "wiped")
    sync(colleague)
    check(colleague.household(hid).visits.map { it.note } == listOf("recorded before the handover"), "the visit is on the server")
}

val secrets = listOf("欧阳秀英", "11010519491231002X", "13912345678")

/** Which of the resident's data the store file and its journals show in the clear. */
fun leaked(path: String): List<String> {
    val f = File(path)
    val raw = f.parentFile.listFiles()!!.filter { it.name.startsWith(f.name) }
        .joinToString("") { String(it.readBytes(), Charsets.ISO_8859_1) }
    return secrets.filter { raw.contains(String(it.toByteArray(), Charsets.ISO_8859_1)) }
}

fun encryptedStoreOpensOnlyWithItsKey(org: Org) {
    val grid = org.grid()
    val key = ByteArray(32).also { java.security.SecureRandom().nextBytes(it) }
    val path = tempPath()
    val p = runBlocking { enroll(path, org.url, org.code(grid), key) }
    val hid = p.createHousehold(household(grid))
    p.addMember(hid, NewMember(Relation.HEAD, secrets[0], secrets[1], null, secrets[2], listOf()))
    p.recordVisit(hid, visit("老人独居"))
    check(sync(p).rejected == 0uL, "syncs")
    check(leaked(path).isEmpty(), "the file shows none of the resident's data: ${leaked(path).size} leaked")
    try { Phone.open(path, ByteArray(32)); check(false, "no error") } catch (e: QiaomenException.WrongKey) {}
    try { Phone.open(path, ByteArray(5)); check(false, "no error") } catch (e: QiaomenException.InvalidInput) {}
    val again = Phone.open(path, key)
    check(again.household(hid).members.map { it.name } == listOf(secrets[0]), "reopened with its key")
}

fun jpeg(n: Int, seed: Int = 0): ByteArray =
    byteArrayOf(0xFF.toByte(), 0xD8.toByte(), 0xFF.toByte(), 0xE0.toByte()) + ByteArray(n) { ((it * 31 + seed) % 256).toByte() }

fun photoAttachedSyncedAndFetched(org: Org) {
    val grid = org.grid()
    val a = org.worker(grid); val b = org.worker(grid)
    val hid = a.createHousehold(household(grid))
    val vid = a.recordVisit(hid, visit("墙体开裂，已拍照"))
    val taken = jpeg(200_000, 3)
    val photo = a.attachPhoto(hid, PhotoSubject.Visit(vid), taken, "墙体开裂", 1_763_164_900_000L)
    check(photo.state == "pending" && photo.mediaType == "image/jpeg", "kept on the phone, to send")
    try { a.attachPhoto(hid, PhotoSubject.Visit(vid), "GIF89a".toByteArray(), "", 0L); check(false, "no error") }
    catch (e: QiaomenException.InvalidInput) { check(e.invalidField == "photo" && e.rule == "media_type", "names the rule") }
    val summary = sync(a)
    check(summary.photosSent == 1uL && a.pendingPhotoCount() == 0uL, "sent after its record")
    sync(b)
    val seen = b.photos(hid)
    check(seen.size == 1 && seen[0].state == "remote" && seen[0].caption == "墙体开裂", "the reference came with the records")
    check(runBlocking { b.photoBytes(hid, photo.hash) }.contentEquals(taken), "fetched when asked")
}

fun main(args: Array<String>) {
    val serverBin = args[0]
    val port = ServerSocket(0).use { it.localPort }
    val data = Files.createTempDirectory("qiaomen-server").toString()
    val server = ProcessBuilder(serverBin, "--listen", "127.0.0.1:$port", "--data-dir", data)
        .redirectOutput(ProcessBuilder.Redirect.DISCARD).redirectError(ProcessBuilder.Redirect.DISCARD).start()
    val url = "http://127.0.0.1:$port"
    val deadline = System.currentTimeMillis() + 30_000
    while (true) {
        try { URL("$url/healthz").readText(); break } catch (e: Exception) {
            if (System.currentTimeMillis() > deadline) { server.destroyForcibly(); throw RuntimeException("server did not start") }
            Thread.sleep(100)
        }
    }
    val org = Org(serverBin, data, url)
    org.admin("unit", "add", "--id", "kt-county", "--kind", "county", "--name", "测试县")
    org.admin("unit", "add", "--id", "kt-town", "--kind", "town", "--parent", "kt-county", "--name", "测试镇")
    org.admin("unit", "add", "--id", "kt-village", "--kind", "village", "--parent", "kt-town", "--name", "测试村")
    val tests = listOf(
        "two phones record visits offline and both see both" to ::twoPhonesSeeBothVisits,
        "a conflict is visible and resolved" to ::conflictVisibleAndResolved,
        "an edit the server would refuse is refused at once and the phone keeps working" to ::forbiddenEditRefusedAtOnce,
        "enrollment and other errors arrive as the documented exceptions" to ::errorsAreTyped,
        "a revoked phone is wiped on its next sync" to ::revokedPhoneIsWiped,
        "a retired phone uploads what it holds, then is wiped" to ::retiredPhoneUploadsThenIsWiped,
        "an encrypted store shows no resident's data and opens only with its key" to ::encryptedStoreOpensOnlyWithItsKey,
        "a photo is attached offline, sent after its record and fetched by another phone" to ::photoAttachedSyncedAndFetched,
    )
    var passed = 0; var failed = 0
    for ((name, test) in tests) {
        try { test(org); passed++; println("ok   $name") }
        catch (e: Throwable) { failed++; println("FAIL $name: $e") }
    }
    server.destroy(); server.waitFor()
    println("$passed passed, $failed failed")
    if (failed > 0) kotlin.system.exitProcess(1)
}
