package ehc;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.parser.IParser;
import ca.uhn.fhir.parser.StrictErrorHandler;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.api.MethodOutcome;
import ca.uhn.fhir.rest.client.api.IGenericClient;
import ca.uhn.fhir.rest.client.interceptor.BearerTokenAuthInterceptor;
import ca.uhn.fhir.rest.server.exceptions.ResourceGoneException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.UUID;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.hl7.fhir.r4.model.Bundle;
import org.hl7.fhir.r4.model.IdType;
import org.hl7.fhir.r4.model.Resource;

/**
 * The client smoke matrix for HAPI FHIR's generic client (tests/client_matrix.py): one JVM runs every step for
 * every resource type, with the strict parser on every response (an unknown element, a wrong JSON type or a bad
 * value fails the step).
 *
 * <p>Usage: {@code java -cp ... ehc.ClientMatrix <spec.json>}, where the spec holds {@code base}, {@code token},
 * {@code patient} and {@code types}: [{type, resource, compartment, member}]. Prints one JSON object
 * {type: {step: "ok" | "n/a: why" | what went wrong}} on stdout.
 */
public final class ClientMatrix {
  private static final String[] STEPS = {"create", "read", "update", "vread", "history", "search", "transaction",
      "paging", "compartment", "xml-read", "xml-create", "delete"};

  private final FhirContext ctx;
  private final IParser parser;
  private final IGenericClient json;
  private final IGenericClient xml;
  private final String patient;

  private ClientMatrix(String base, String token, String patient) {
    this.ctx = FhirContext.forR4();
    ctx.setParserErrorHandler(new StrictErrorHandler());
    ctx.getRestfulClientFactory().setSocketTimeout(60_000);
    this.parser = ctx.newJsonParser();
    this.json = client(base, token, EncodingEnum.JSON);
    this.xml = client(base, token, EncodingEnum.XML);
    this.patient = patient;
  }

  private IGenericClient client(String base, String token, EncodingEnum encoding) {
    IGenericClient c = ctx.newRestfulGenericClient(base);
    c.registerInterceptor(new BearerTokenAuthInterceptor(token));
    c.setEncoding(encoding);
    return c;
  }

  /** One step: returns "ok" or "n/a: ..."; throws on failure. */
  private interface Step {
    String run() throws Exception;
  }

  private static final class State {
    String id;
    String tx;
    IBaseResource current;
  }

  public static void main(String[] args) throws Exception {
    ObjectMapper mapper = new ObjectMapper();
    JsonNode spec = mapper.readTree(Files.readString(Path.of(args[0])));
    ClientMatrix m = new ClientMatrix(spec.get("base").asText(), spec.get("token").asText(),
        spec.get("patient").asText());
    Map<String, Map<String, String>> out = new LinkedHashMap<>();
    for (JsonNode entry : spec.get("types")) {
      out.put(entry.get("type").asText(), m.row(entry, mapper.writeValueAsString(entry.get("resource"))));
    }
    System.out.println(mapper.writeValueAsString(out));
  }

  private Map<String, String> row(JsonNode entry, String resourceJson) {
    String type = entry.get("type").asText();
    Class<? extends IBaseResource> cls = ctx.getResourceDefinition(type).getImplementingClass();
    State s = new State();
    Map<String, Step> steps = new LinkedHashMap<>();
    steps.put("create", () -> {
      MethodOutcome mo = json.create().resource(parser.parseResource(resourceJson)).execute();
      expect(Boolean.TRUE.equals(mo.getCreated()) && "1".equals(mo.getId().getVersionIdPart()),
          "created " + mo.getId());
      IBaseResource body = returned(mo, type);
      expect(body != null && body.getIdElement().getIdPart().equals(mo.getId().getIdPart()),
          "no created resource in the response");
      s.id = mo.getId().getIdPart();
      return "ok";
    });
    steps.put("read", () -> {
      s.current = json.read().resource(cls).withId(s.id).execute();
      expect(s.id.equals(s.current.getIdElement().getIdPart()), "read " + s.current.getIdElement());
      return "ok";
    });
    steps.put("update", () -> {
      ((Resource) s.current).getMeta().addTag("http://example.org/tags", "client-matrix", null);
      MethodOutcome mo = json.update().resource(s.current).withId(s.id).execute();
      expect("2".equals(mo.getId().getVersionIdPart()), "updated to " + mo.getId());
      return "ok";
    });
    steps.put("vread", () -> {
      IBaseResource old = json.read().resource(cls).withIdAndVersion(s.id, "1").execute();
      expect("1".equals(old.getMeta().getVersionId()), "vread " + old.getMeta().getVersionId());
      return "ok";
    });
    steps.put("history", () -> {
      Bundle b = json.history().onInstance(new IdType(type, s.id)).returnBundle(Bundle.class).execute();
      List<String> versions = new ArrayList<>();
      b.getEntry().forEach(e -> versions.add(e.getResource().getMeta().getVersionId()));
      expect(versions.equals(List.of("2", "1")), "history versions " + versions);
      return "ok";
    });
    steps.put("search", () -> {
      Bundle b = json.search().forResource(type).where(Resource.RES_ID.exactly().code(s.id))
          .returnBundle(Bundle.class).execute();
      expect(ids(b).equals(List.of(s.id)), "search gave " + ids(b));
      return "ok";
    });
    steps.put("transaction", () -> {
      Bundle tx = new Bundle().setType(Bundle.BundleType.TRANSACTION);
      tx.addEntry().setFullUrl("urn:uuid:" + UUID.randomUUID()).setResource((Resource) parser.parseResource(
          resourceJson)).getRequest().setMethod(Bundle.HTTPVerb.POST).setUrl(type);
      Bundle r = json.transaction().withBundle(tx).execute();
      expect(r.getType() == Bundle.BundleType.TRANSACTIONRESPONSE && r.getEntry().size() == 1,
          "transaction response " + r.getType() + " with " + r.getEntry().size() + " entries");
      Bundle.BundleEntryResponseComponent resp = r.getEntryFirstRep().getResponse();
      expect(resp.getStatus().startsWith("201"), "status " + resp.getStatus());
      IdType created = new IdType(resp.getLocation());
      expect(type.equals(created.getResourceType()), "location " + resp.getLocation());
      s.tx = created.getIdPart();
      return "ok";
    });
    steps.put("paging", () -> {
      Bundle page = json.search().forResource(type).where(Resource.RES_ID.exactly().codes(s.id, s.tx)).count(1)
          .returnBundle(Bundle.class).execute();
      List<Integer> sizes = new ArrayList<>();
      Set<String> found = new TreeSet<>();
      while (true) {
        sizes.add(page.getEntry().size());
        found.addAll(ids(page));
        if (page.getLink(Bundle.LINK_NEXT) == null || sizes.size() > 5) {
          break;
        }
        page = json.loadPage().next(page).execute();
      }
      expect(sizes.equals(List.of(1, 1)) && found.equals(new TreeSet<>(List.of(s.id, s.tx))),
          "pages " + sizes + " gave " + found);
      return "ok";
    });
    steps.put("compartment", () -> {
      if (!entry.get("compartment").asBoolean()) {
        return "n/a: not in the patient compartment";
      }
      Bundle b = json.search().forResource("Patient").withIdAndCompartment(patient, type)
          .returnBundle(Bundle.class).execute();
      List<String> got = ids(b);
      if (type.equals("Patient")) {
        expect(got.equals(List.of(patient)), "Patient/" + patient + "/Patient gave " + got);
      } else if (entry.get("member").asBoolean()) {
        expect(got.contains(s.id) && got.contains(s.tx), "compartment gave " + got);
      }
      return "ok";
    });
    steps.put("xml-read", () -> {
      IBaseResource got = xml.read().resource(cls).withId(s.id).execute();
      expect(s.id.equals(got.getIdElement().getIdPart()) && "2".equals(got.getMeta().getVersionId()),
          "XML read " + got.getIdElement());
      return "ok";
    });
    steps.put("xml-create", () -> {
      MethodOutcome mo = xml.create().resource(parser.parseResource(resourceJson)).execute();
      expect(Boolean.TRUE.equals(mo.getCreated()) && "1".equals(mo.getId().getVersionIdPart())
          && returned(mo, type) != null, "XML create " + mo.getId());
      return "ok";
    });
    steps.put("delete", () -> {
      json.delete().resourceById(new IdType(type, s.id)).execute();
      try {
        json.read().resource(cls).withId(s.id).execute();
      } catch (ResourceGoneException gone) {
        return "ok";
      }
      throw new AssertionError("read after delete did not answer 410");
    });
    Map<String, String> cells = new LinkedHashMap<>();
    for (String step : STEPS) {
      if (s.id == null && !step.equals("create") && !step.equals("xml-create")) {
        cells.put(step, "not run: create failed");
        continue;
      }
      try {
        cells.put(step, steps.get(step).run());
      } catch (Exception | AssertionError e) {
        String msg = e.getClass().getSimpleName() + ": " + e.getMessage();
        cells.put(step, msg.length() > 400 ? msg.substring(0, 400) : msg);
      }
    }
    return cells;
  }

  /**
   * The resource a create answered with. HAPI's client files a returned OperationOutcome under
   * getOperationOutcome(), as it cannot tell a created OperationOutcome from a message about the request.
   */
  private static IBaseResource returned(MethodOutcome mo, String type) {
    return mo.getResource() == null && type.equals("OperationOutcome") ? mo.getOperationOutcome() : mo.getResource();
  }

  private static List<String> ids(Bundle b) {
    List<String> out = new ArrayList<>();
    for (Bundle.BundleEntryComponent e : b.getEntry()) {
      if (e.getSearch().getMode() != Bundle.SearchEntryMode.OUTCOME && e.getResource() != null) {
        out.add(e.getResource().getIdElement().getIdPart());
      }
    }
    return out;
  }

  private static void expect(boolean condition, String message) {
    if (!condition) {
      throw new AssertionError(message);
    }
  }
}
